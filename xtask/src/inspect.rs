//! `cargo xtask build-probes`: build, then list what the object holds.

use crate::util::{Ctx, Result};
use object::{Object, ObjectSection, ObjectSymbol, SectionKind, SymbolKind};

pub fn build_probes(ctx: &Ctx) -> Result<()> {
    let cfg = bpfckpt_probe_build::BuildConfig::from_env(ctx.root.clone(), ctx.target_dir())?;
    let path = bpfckpt_probe_build::build(&cfg)?;
    let bytes = std::fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    print!("{}", describe(&bytes)?);
    println!("object: {} ({} bytes)", path.display(), bytes.len());
    Ok(())
}

/// Programs (global functions in program sections), maps (symbols in
/// `maps`), and the data sections, one line each.
pub fn describe(bytes: &[u8]) -> Result<String> {
    // `object` wants aligned input.
    let aligned: Vec<u64> = bytes
        .chunks(8)
        .map(|c| {
            let mut a = [0u8; 8];
            a[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(a)
        })
        .collect();
    let data: Vec<u8> = aligned
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .take(bytes.len())
        .collect();
    let file = object::File::parse(&*data).map_err(|e| format!("parse probe object: {e}"))?;
    let mut out = String::new();
    for sym in file.symbols() {
        let Some(idx) = sym.section_index() else {
            continue;
        };
        let Ok(sec) = file.section_by_index(idx) else {
            continue;
        };
        let sname = sec.name().unwrap_or("?");
        let name = sym.name().unwrap_or("?");
        if sym.kind() == SymbolKind::Text && sym.is_global() && (sname.contains('/')) {
            out += &format!("program  {name:<20} {sname} ({} insns)\n", sym.size() / 8);
        } else if sname == "maps" && sym.kind() == SymbolKind::Data {
            let d = sec.data().unwrap_or(&[]);
            let at = sym.address() as usize;
            let w = |i: usize| {
                d.get(at + 4 * i..at + 4 * i + 4)
                    .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            };
            out += &format!(
                "map      {name:<20} type {:>2} key {:>3} value {:>5} entries {:>6} flags {:#x}\n",
                w(0),
                w(1),
                w(2),
                w(3),
                w(4)
            );
        }
    }
    for sec in file.sections() {
        let name = sec.name().unwrap_or("?");
        let data_like = matches!(
            sec.kind(),
            SectionKind::Data
                | SectionKind::ReadOnlyData
                | SectionKind::UninitializedData
                | SectionKind::ReadOnlyString
        );
        if data_like || name == "license" || name == ".text" {
            out += &format!("section  {name:<20} {} bytes\n", sec.size());
        }
    }
    Ok(out)
}
