//! Phase 1: the ELF header of a relocatable little-endian 64-bit BPF object.

use super::{Elf, elf_err};
use crate::{Result, bail};
use object::LittleEndian as LE;
use object::elf;
use object::read::elf::FileHeader;

/// The ELF identification bytes, checked before the object crate sees the
/// file: its messages do not say what was expected.
fn check_ident(bytes: &[u8]) -> Result<()> {
    let Some(ident) = bytes.get(..16) else {
        bail!(
            "invalid BPF object: {} bytes is too short for an ELF header",
            bytes.len()
        );
    };
    if ident[..4] != elf::ELFMAG {
        bail!("invalid BPF object: not an ELF file");
    }
    if ident[4] != elf::ELFCLASS64 {
        bail!(
            "invalid BPF object: not a 64-bit ELF file (class {})",
            ident[4]
        );
    }
    if ident[5] != elf::ELFDATA2LSB {
        bail!("invalid BPF object: not little-endian");
    }
    Ok(())
}

/// The file header, once it says BPF (`EM_BPF`) and relocatable (`ET_REL`).
pub(super) fn parse_header(bytes: &[u8]) -> Result<(&Elf, LE)> {
    check_ident(bytes)?;
    let hdr = Elf::parse(bytes).map_err(elf_err("ELF header"))?;
    let endian = hdr.endian().map_err(elf_err("ELF header"))?;
    if hdr.e_machine(endian) != elf::EM_BPF {
        bail!(
            "invalid BPF object: e_machine is {}, expected EM_BPF ({})",
            hdr.e_machine(endian),
            elf::EM_BPF
        );
    }
    if hdr.e_type(endian) != elf::ET_REL {
        bail!(
            "invalid BPF object: not a relocatable object (e_type {})",
            hdr.e_type(endian)
        );
    }
    Ok((hdr, endian))
}

#[cfg(test)]
mod tests {
    use super::super::{aligned, test_util};
    use super::*;

    fn header_err(bytes: &[u8]) -> String {
        aligned(bytes, |b| parse_header(b).map(drop))
            .unwrap_err()
            .msg
    }

    #[test]
    fn identification() {
        assert!(header_err(&[]).contains("0 bytes is too short"));
        assert!(header_err(b"\x7fELF").contains("too short"));
        assert!(header_err(&[0u8; 64]).contains("not an ELF file"));
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&elf::ELFMAG);
        b[4] = elf::ELFCLASS32;
        assert!(header_err(&b).contains("not a 64-bit ELF file (class 1)"));
        b[4] = elf::ELFCLASS64;
        b[5] = elf::ELFDATA2MSB;
        assert!(header_err(&b).contains("not little-endian"));
        // Identification alone passes; the object crate then wants a whole header.
        b[5] = elf::ELFDATA2LSB;
        assert!(check_ident(&b).is_ok());
        assert!(header_err(&b).contains("ELF header"));
    }

    #[test]
    fn machine_and_type() {
        let good = test_util::object(|_| {});
        assert!(aligned(&good, |b| parse_header(b).map(drop)).is_ok());
        let mut b = good.clone();
        b[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        assert!(header_err(&b).contains("e_machine is 62, expected EM_BPF (247)"));
        let mut b = good;
        b[16..18].copy_from_slice(&elf::ET_EXEC.to_le_bytes());
        assert!(header_err(&b).contains("not a relocatable object (e_type 2)"));
    }
}
