//! Regression replay: every input the fuzz driver ever saved
//! (fuzz-corpus/*.bin: crashes, memory-budget overruns, hangs, plus
//! hand-made hostile objects) and every seed go through parse + link +
//! program_btf again. None may panic, break an invariant or exceed the
//! memory budget (see fuzzing/mod.rs). The probe object seed is replayed by
//! loader/tests/probes_obj.rs.

mod common;
mod fuzzing;

use std::path::Path;

#[test]
fn seeds_link() {
    for (name, bytes) in fuzzing::seeds() {
        let sig = fuzzing::replay(Path::new(&name), &bytes);
        assert!(sig.starts_with("ok:"), "{name}: {sig}");
    }
}

#[test]
fn corpus_replays_without_panic() {
    let files = fuzzing::corpus_files();
    for p in &files {
        let bytes = std::fs::read(p).expect("read corpus file");
        let sig = fuzzing::replay(p, &bytes);
        eprintln!("{}: {sig}", p.display());
    }
    eprintln!("{} corpus inputs replayed", files.len());
}

/// Crashes of known, reported bugs: when this passes, move the files up to
/// fuzz-corpus/ (they become regression inputs) and drop the ignore.
#[test]
fn known_crashes_are_fixed() {
    for p in fuzzing::known_files() {
        let bytes = std::fs::read(&p).expect("read known crash");
        let sig = fuzzing::replay(&p, &bytes);
        eprintln!("{}: {sig}", p.display());
    }
}
