fn main() {
    println!("{}", bpfckpt::PROBES_OBJ.len());
}
