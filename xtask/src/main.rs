use std::path::PathBuf;

fn main() {
    xtask::maybe_act_as_linker();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = root.canonicalize().unwrap_or(root);
    let cfg = xtask::probes::BuildConfig::from_env(root.clone(), root.join("target")).unwrap();
    match xtask::probes::build(&cfg) {
        Ok(p) => println!("{}", p.display()),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1)
        }
    }
}
