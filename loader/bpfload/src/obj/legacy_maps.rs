//! Phase 4: the legacy map definitions of the `maps` section. Each map is
//! identified by its symbol (`st_value`, `st_size`), never by a fixed
//! stride: a definition may be longer than the 20-byte `bpf_map_def` prefix
//! the loader reads. Then: map names are unique across the object.

use super::symbols::SymInfo;
use super::{MAP_DEF_SIZE, MapKind, MapSlot, MapSpec, Parser, elf_err};
use crate::{Result, bail};
use object::elf;
use object::read::elf::SectionHeader;

impl Parser<'_> {
    /// Appends the legacy maps (by offset) to the global-data maps and checks
    /// that no two maps share a name.
    pub(super) fn legacy_maps(&mut self) -> Result<()> {
        if let Some(mi) = self.maps_section {
            let s = self
                .sections
                .section(object::SectionIndex(mi))
                .map_err(elf_err("maps"))?;
            let data = s.data(self.endian, self.bytes).map_err(elf_err("maps"))?;
            for (start, spec) in map_defs(data, mi, &self.syms)? {
                self.map_slots.push(MapSlot {
                    start,
                    map: self.maps.len(),
                });
                self.maps.push(spec);
            }
        }
        unique_names(&self.maps)
    }
}

/// The maps defined in `data` (the `maps` section, index `mi`), sorted by
/// offset, each with its offset.
fn map_defs(data: &[u8], mi: usize, syms: &[SymInfo]) -> Result<Vec<(u64, MapSpec)>> {
    let mut defs: Vec<&SymInfo> = syms
        .iter()
        .filter(|y| {
            y.is_in(mi)
                && y.kind != elf::STT_SECTION
                && y.kind != elf::STT_FILE
                && (y.kind == elf::STT_OBJECT || y.size > 0)
        })
        .collect();
    defs.sort_by_key(|y| y.value);
    let mut prev_end = 0u64;
    let mut out = Vec::with_capacity(defs.len());
    for y in defs {
        let def = map_def(data, y)?;
        if y.value < prev_end {
            bail!(
                "invalid BPF object: map `{}` overlaps another map",
                y.label()
            );
        }
        prev_end = y.value + y.size;
        if y.name.is_empty() {
            bail!(
                "invalid BPF object: unnamed map definition at maps+{:#x}",
                y.value
            );
        }
        let word = |k: usize| u32::from_le_bytes([def[k], def[k + 1], def[k + 2], def[k + 3]]);
        out.push((
            y.value,
            MapSpec {
                name: y.name.clone(),
                kind: MapKind::Legacy,
                map_type: word(0),
                key_size: word(4),
                value_size: word(8),
                max_entries: word(12),
                flags: word(16),
                initial: None,
            },
        ));
    }
    Ok(out)
}

/// The `bpf_map_def` prefix of symbol `y`'s definition, once the whole
/// definition lies inside `data`.
fn map_def<'d>(data: &'d [u8], y: &SymInfo) -> Result<&'d [u8]> {
    if y.size < MAP_DEF_SIZE {
        bail!(
            "invalid BPF object: map `{}` definition is {} bytes, expected at least {MAP_DEF_SIZE}",
            y.label(),
            y.size
        );
    }
    let end = y.value.checked_add(y.size);
    let def = usize::try_from(y.value)
        .ok()
        .and_then(|v| data.get(v..v.checked_add(MAP_DEF_SIZE as usize)?));
    match (end, def) {
        (Some(end), Some(def)) if end <= data.len() as u64 => Ok(def),
        _ => bail!(
            "invalid BPF object: map `{}` lies outside the maps section",
            y.label()
        ),
    }
}

/// Maps are looked up by name: two with one name would be ambiguous.
fn unique_names(maps: &[MapSpec]) -> Result<()> {
    for (i, m) in maps.iter().enumerate() {
        if maps[..i].iter().any(|o| o.name == m.name) {
            bail!("invalid BPF object: two maps named `{}`", m.name);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_util::sym;
    use super::*;

    const MI: u16 = 3;

    fn def(words: [u32; 5]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    fn obj(name: &str, value: u64, size: u64) -> SymInfo {
        sym(name, MI, (value, size), elf::STT_OBJECT, elf::STB_GLOBAL)
    }

    fn err(data: &[u8], syms: &[SymInfo]) -> String {
        map_defs(data, MI.into(), syms).unwrap_err().msg
    }

    #[test]
    fn definitions_by_symbol_in_offset_order() {
        let mut data = def([1, 4, 8, 128, 0]);
        data.extend([0; 4]); // a 24-byte definition
        data.extend(def([27, 0, 0, 4096, 5]));
        let syms = [
            obj("B", 24, 20),
            obj("A", 0, 24),
            // Not definitions: the section symbol, other sections, a size-0 NOTYPE.
            sym("", MI, (0, 0), elf::STT_SECTION, elf::STB_LOCAL),
            sym("X", MI + 1, (0, 20), elf::STT_OBJECT, elf::STB_GLOBAL),
            sym("L", MI, (4, 0), elf::STT_NOTYPE, elf::STB_LOCAL),
        ];
        let maps = map_defs(&data, MI.into(), &syms).unwrap();
        let got: Vec<(u64, &str, [u32; 5])> = maps
            .iter()
            .map(|(at, m)| {
                let w = [m.map_type, m.key_size, m.value_size, m.max_entries, m.flags];
                (*at, m.name.as_str(), w)
            })
            .collect();
        assert_eq!(
            got,
            [(0, "A", [1, 4, 8, 128, 0]), (24, "B", [27, 0, 0, 4096, 5])]
        );
        assert!(
            maps.iter()
                .all(|(_, m)| m.kind == MapKind::Legacy && m.initial.is_none())
        );
    }

    #[test]
    fn bad_definitions() {
        let data = def([1, 4, 8, 1, 0]);
        assert!(
            err(&data, &[obj("A", 0, 16)])
                .contains("`A` definition is 16 bytes, expected at least 20")
        );
        assert!(err(&data, &[obj("A", 4, 20)]).contains("`A` lies outside the maps section"));
        assert!(err(&data, &[obj("A", 0, 24)]).contains("lies outside"));
        assert!(err(&data, &[obj("A", u64::MAX - 4, 20)]).contains("lies outside"));
        let mut two = data.clone();
        two.extend(def([1, 4, 8, 1, 0]));
        assert!(
            err(&two, &[obj("A", 0, 24), obj("B", 20, 20)]).contains("`B` overlaps another map")
        );
        assert!(err(&data, &[obj("", 0, 20)]).contains("unnamed map definition at maps+0x0"));
    }

    #[test]
    fn names_are_unique() {
        let (_, a) = map_defs(&def([1, 4, 8, 1, 0]), MI.into(), &[obj("A", 0, 20)])
            .unwrap()
            .remove(0);
        assert!(unique_names(std::slice::from_ref(&a)).is_ok());
        let e = unique_names(&[a.clone(), a]).unwrap_err();
        assert!(e.msg.contains("two maps named `A`"), "{e}");
    }
}
