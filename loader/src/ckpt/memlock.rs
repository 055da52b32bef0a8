//! RLIMIT_MEMLOCK: kernels before 5.11 charge BPF maps and programs to it
//! rather than to the memory cgroup, so bpfckpt raises it before creating
//! any map. A failure to raise it is only worth a word if a map is then
//! refused with EPERM, which is how those kernels say "over the limit".

use crate::Error;
use std::sync::OnceLock;

/// Why the limit could not be raised to infinity, if it could not.
static NOT_RAISED: OnceLock<String> = OnceLock::new();

/// Raises the limit (once per process; later calls do nothing).
pub fn raise() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        if let Err(e) = crate::os::raise_memlock() {
            let _ = NOT_RAISED.set(e.msg);
        }
    });
}

/// `e` with the likely cause added when it is an EPERM from creating a map
/// (or loading a program) and the limit could not be raised.
pub fn explain(e: Error) -> Error {
    match NOT_RAISED.get() {
        Some(why) => explain_with(e, why),
        None => e,
    }
}

fn explain_with(e: Error, why: &str) -> Error {
    if e.errno != Some(libc::EPERM) {
        return e;
    }
    Error {
        msg: format!(
            "{}; RLIMIT_MEMLOCK is the likely cause (kernels before 5.11 charge BPF maps to it) \
             and it could not be raised: {why}",
            e.msg
        ),
        ..e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_eperm_is_explained() {
        let why = "setrlimit(RLIMIT_MEMLOCK): Operation not permitted";
        let e = explain_with(Error::sys("map `CONFIG`", libc::EPERM), why);
        assert!(
            e.msg.contains("RLIMIT_MEMLOCK is the likely cause"),
            "{}",
            e.msg
        );
        assert!(e.msg.ends_with(why), "{}", e.msg);
        assert_eq!(e.errno, Some(libc::EPERM));
        let e = explain_with(Error::sys("map `CONFIG`", libc::EINVAL), why);
        assert!(!e.msg.contains("RLIMIT_MEMLOCK"), "{}", e.msg);
    }
}
