//! Protocol target with a 400 MB array in `.bss`, most of which it never
//! touches: `ckpt-bss400 [--cycles N] [--dir DIR]`.

#[path = "../src/proto.rs"]
mod proto;
#[path = "../src/sys.rs"]
mod sys;

use proto::*;

const SIZE: usize = 400_000_000;
const PAGE: usize = 4096;
static mut BIG: [u8; SIZE] = [0; SIZE];

fn main() {
    let a = args();
    let m = Markers::new(&a.dir);
    let mut big = sys::from_static(&raw mut BIG as *mut u8, SIZE);
    // Touched: the first MiB, and every 97th page after it.
    const FIRST: usize = (1 << 20) / PAGE;
    const STRIDE: usize = 97;
    let touched = |i: usize| i >= FIRST && (i - FIRST).is_multiple_of(STRIDE);
    for c in 1..=a.cycles {
        let seed = 0xb55 + u64::from(c);
        fill(&mut big.bytes_mut()[..1 << 20], seed);
        for p in (FIRST..SIZE / PAGE).step_by(STRIDE) {
            big.bytes_mut()[p * PAGE] = (p as u8) ^ (c as u8) | 1;
        }
        m.checkpoint();
        fill(&mut big.bytes_mut()[..1 << 20], !seed);
        for p in (FIRST..SIZE / PAGE).step_by(STRIDE) {
            big.bytes_mut()[p * PAGE] = 0;
            // Dirty a page that held nothing at the checkpoint.
            if p + 1 < SIZE / PAGE {
                big.bytes_mut()[(p + 1) * PAGE + 5] = 0xee;
            }
        }
        m.restore();
        verify("first MiB", &big.bytes()[..1 << 20], seed);
        for (i, page) in big.bytes().chunks(PAGE).enumerate().skip(FIRST) {
            let want0 = if touched(i) {
                (i as u8) ^ (c as u8) | 1
            } else {
                0
            };
            if page[0] != want0 || page[1..].iter().any(|&b| b != 0) {
                fail(&format!(
                    "page {i} of the .bss array differs after cycle {c}"
                ));
            }
        }
    }
    println!("PASS bss-400m cycles={} bytes={SIZE}", a.cycles);
}
