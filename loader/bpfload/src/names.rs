//! Naming rules, each written once: what the kernel accepts as an object
//! name, what may stand in a tracepoint name, how a Rust symbol reads
//! without its mangling, and how a map is found by name. Pure.

/// Kernel object names hold at most 15 bytes plus NUL.
pub const BPF_OBJ_NAME_LEN: usize = 16;

/// The name the kernel gets for a map or program: only the bytes it accepts
/// (`[A-Za-z0-9_.]`, others dropped), at most 15 (`BPF_OBJ_NAME_LEN` less the NUL).
pub(crate) fn kernel_name(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
        .take(BPF_OBJ_NAME_LEN - 1)
        .collect()
}

/// Whether `s` may be a tracepoint category or name. They end up in tracefs
/// paths: no `/`, no `.`/`..`, nothing exotic.
pub(crate) fn valid_tracepoint_part(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The last identifier of a Rust v0 mangled name (`_RNvCs..._1p6COUNTS` -> `COUNTS`),
/// or the name itself.
pub(crate) fn demangled_tail(name: &str) -> &str {
    if !name.starts_with("_R") {
        return name;
    }
    // v0 ends with `<decimal length><identifier>`; find the split where the
    // decimal prefix equals the length of the rest.
    let b = name.as_bytes();
    for start in (2..b.len()).rev() {
        if !b[start - 1].is_ascii_digit() {
            continue;
        }
        let mut d = start - 1;
        while d > 2 && b[d - 1].is_ascii_digit() {
            d -= 1;
        }
        if let Some(len) = name.get(d..start).and_then(|s| s.parse::<usize>().ok())
            && len == b.len() - start
            && len > 0
            && !b[start].is_ascii_digit()
        {
            return name.get(start..).unwrap_or(name);
        }
    }
    name
}

/// The position of `name` among `names`: the one spelled exactly so, else
/// the first whose demangled tail is `name` (maps are asked for by their
/// Rust name, `COUNTS`, whatever the compiler made of it).
pub(crate) fn find<'a>(names: impl Iterator<Item = &'a str> + Clone, name: &str) -> Option<usize> {
    let mut all = names.clone();
    all.position(|n| n == name)
        .or_else(|| names.into_iter().position(|n| demangled_tail(n) == name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_keep_what_the_kernel_accepts() {
        assert_eq!(kernel_name("a-b/c.d_e"), "abc.d_e");
        assert_eq!(kernel_name(".rodata.str1.1"), ".rodata.str1.1");
        assert_eq!(kernel_name("abcdefghijklmnopqrstuvwxyz"), "abcdefghijklmno");
        assert_eq!(kernel_name("é-ü"), "");
    }

    #[test]
    fn tracepoint_parts() {
        for ok in ["sys_enter_openat", "a-b", "x.y", ".x", "A1"] {
            assert!(valid_tracepoint_part(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "é", "a\0"] {
            assert!(!valid_tracepoint_part(bad), "{bad:?}");
        }
    }

    #[test]
    fn demangled_names() {
        assert_eq!(demangled_tail("_RNvCs12jkoC9p3aE_1p6COUNTS"), "COUNTS");
        assert_eq!(
            demangled_tail("_RNvCsfLfy6EI15iL_7___rustc17rust_begin_unwind"),
            "rust_begin_unwind"
        );
        assert_eq!(demangled_tail("EVENTS"), "EVENTS");
        // Not a v0 tail: the name itself.
        assert_eq!(demangled_tail("_R"), "_R");
        assert_eq!(demangled_tail("_R12"), "_R12");
        assert_eq!(demangled_tail("_R3ab"), "_R3ab");
    }

    #[test]
    fn find_prefers_the_exact_name() {
        let names = ["_RNvCs1_1p6COUNTS", "COUNTS_2", "COUNTS", ".data"];
        assert_eq!(find(names.iter().copied(), "COUNTS"), Some(2));
        assert_eq!(find(names[..2].iter().copied(), "COUNTS"), Some(0));
        assert_eq!(find(names.iter().copied(), "_RNvCs1_1p6COUNTS"), Some(0));
        assert_eq!(find(names.iter().copied(), ".data"), Some(3));
        assert_eq!(find(names.iter().copied(), "COUNTS_"), None);
    }
}
