//! The probes' ring buffer records, decoded in one place into typed events
//! (`probes/src/abi.rs` documents each field).

use super::abi;
use super::wire::{u32_at, u64_at};
use std::mem::offset_of;

/// Why a checkpoint's BPF copy is incomplete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stale {
    /// The copy is complete as far as BPF could read.
    No,
    /// The region table was stale or torn: nothing usable was saved.
    Layout,
    /// The store filled up: the first `saved` pages are good.
    Overflow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub tgid: u32,
    /// The thread that asked.
    pub tid: u32,
    /// Held in its trigger open (until user space answers it), not stopped.
    pub by_open: bool,
    /// The probe stopped the target: user space completes, then continues it.
    pub held: bool,
    /// The region table the copy walked (`Config::applied_seq` then).
    pub table_seq: u64,
    /// `Config::version` when the copy began.
    pub version: u64,
    /// The copy took the `DIRTY` list's pages into the slots `FREE` named
    /// (else it walked the region table into slots `0..saved`).
    pub incremental: bool,
    /// Pages copied into store slots `0..saved`, in region-table order.
    pub saved: u64,
    /// Pages BPF could not read.
    pub unreadable: u64,
    /// Pages skipped as never written.
    pub skipped: u64,
    pub stale: Stale,
    pub ns: u64,
    /// `State::gup` when an incremental copy began.
    pub gup: u64,
}

/// Pages of the zero ranges that user space must zero (no write helper).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroTodo {
    /// The first `n` entries of `ZERO_TODO`.
    Listed(u64),
    /// User space scans the zero ranges itself.
    Scan,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restore {
    pub tgid: u32,
    /// The thread that asked.
    pub tid: u32,
    /// Held in its trigger open (until user space answers it), not stopped.
    pub by_open: bool,
    pub held: bool,
    /// Saved pages BPF wrote back.
    pub written: u64,
    /// Saved pages BPF could not write (marked failed in the store).
    pub write_failed: u64,
    /// Zero-range pages BPF zeroed.
    pub zeroed: u64,
    /// Zero-range pages BPF could not zero (or `ZERO_TODO` overflowed).
    pub zero_failed: u64,
    pub zero_todo: ZeroTodo,
    pub ns: u64,
    /// The probe did not (completely) do its part: user space writes every
    /// saved page and scans the zero ranges.
    pub partial: bool,
    /// The first `DIRTY` entries whose `since` bits the probe cleared.
    pub since_cleared: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The served process exec'd, or a watched name did (`held`).
    Exec {
        tgid: u32,
        held: bool,
    },
    /// The served process changed its mappings; `seq` is the new layout
    /// sequence number.
    Layout {
        tgid: u32,
        seq: u64,
    },
    Checkpoint(Checkpoint),
    Restore(Restore),
    /// The served process started thread `tid` on a stack holding `stack`.
    Clone {
        tgid: u32,
        tid: u32,
        stack: u64,
    },
}

impl Event {
    pub fn tgid(&self) -> u32 {
        match self {
            Event::Exec { tgid, .. } | Event::Layout { tgid, .. } | Event::Clone { tgid, .. } => {
                *tgid
            }
            Event::Checkpoint(c) => c.tgid,
            Event::Restore(r) => r.tgid,
        }
    }
}

const HDR: usize = size_of::<abi::EventHeader>();
const _: () = {
    assert!(HDR == 16);
    assert!(offset_of!(abi::EventHeader, held) == 12);
    assert!(offset_of!(abi::LayoutEvent, seq) == HDR);
    assert!(size_of::<abi::LayoutEvent>() == HDR + 16);
    assert!(offset_of!(abi::CheckpointEvent, table_seq) == HDR);
    assert!(offset_of!(abi::CheckpointEvent, version) == HDR + 8);
    assert!(offset_of!(abi::CheckpointEvent, incremental) == HDR + 16);
    assert!(offset_of!(abi::CheckpointEvent, saved) == HDR + 24);
    assert!(offset_of!(abi::CheckpointEvent, unreadable) == HDR + 32);
    assert!(offset_of!(abi::CheckpointEvent, skipped) == HDR + 40);
    assert!(offset_of!(abi::CheckpointEvent, stale) == HDR + 48);
    assert!(offset_of!(abi::CheckpointEvent, ns) == HDR + 56);
    assert!(offset_of!(abi::CheckpointEvent, gup) == HDR + 64);
    assert!(size_of::<abi::CheckpointEvent>() == HDR + 72);
    assert!(offset_of!(abi::RestoreEvent, written) == HDR);
    assert!(offset_of!(abi::RestoreEvent, write_failed) == HDR + 8);
    assert!(offset_of!(abi::RestoreEvent, zeroed) == HDR + 16);
    assert!(offset_of!(abi::RestoreEvent, zero_failed) == HDR + 24);
    assert!(offset_of!(abi::RestoreEvent, zero_todo) == HDR + 32);
    assert!(offset_of!(abi::RestoreEvent, ns) == HDR + 40);
    assert!(offset_of!(abi::RestoreEvent, partial) == HDR + 48);
    assert!(offset_of!(abi::RestoreEvent, since_cleared) == HDR + 56);
    assert!(size_of::<abi::RestoreEvent>() == HDR + 64);
    assert!(offset_of!(abi::CloneEvent, stack) == HDR);
    assert!(offset_of!(abi::CloneEvent, tid) == HDR + 8);
    assert!(size_of::<abi::CloneEvent>() == HDR + 16);
};

/// Decodes one ring buffer record; `None` for a short record or an unknown
/// kind (ignored: a newer probe never confuses an older reader).
pub fn decode(b: &[u8]) -> Option<Event> {
    if b.len() < HDR {
        return None;
    }
    let (kind, tgid, tid, hold) = (u32_at(b, 0), u32_at(b, 4), u32_at(b, 8), u32_at(b, 12));
    let (held, by_open) = (hold != 0, hold == abi::HELD_OPEN);
    let field = |i: usize| u64_at(b, HDR + 8 * i);
    let fits = |size: usize| b.len() >= size;
    match kind {
        abi::EV_EXEC => Some(Event::Exec { tgid, held }),
        abi::EV_LAYOUT if fits(size_of::<abi::LayoutEvent>()) => Some(Event::Layout {
            tgid,
            seq: field(0),
        }),
        abi::EV_CHECKPOINT if fits(size_of::<abi::CheckpointEvent>()) => {
            Some(Event::Checkpoint(Checkpoint {
                tgid,
                tid,
                by_open,
                held,
                table_seq: field(0),
                version: field(1),
                incremental: field(2) != 0,
                saved: field(3),
                unreadable: field(4),
                skipped: field(5),
                stale: match field(6) {
                    0 => Stale::No,
                    abi::STALE_OVERFLOW => Stale::Overflow,
                    // Anything else: trust nothing the copy saved.
                    _ => Stale::Layout,
                },
                ns: field(7),
                gup: field(8),
            }))
        }
        abi::EV_RESTORE if fits(size_of::<abi::RestoreEvent>()) => Some(Event::Restore(Restore {
            tgid,
            tid,
            by_open,
            held,
            written: field(0),
            write_failed: field(1),
            zeroed: field(2),
            zero_failed: field(3),
            zero_todo: match field(4) {
                u64::MAX => ZeroTodo::Scan,
                n => ZeroTodo::Listed(n),
            },
            ns: field(5),
            partial: field(6) != 0,
            since_cleared: field(7),
        })),
        abi::EV_CLONE if fits(size_of::<abi::CloneEvent>()) => Some(Event::Clone {
            tgid,
            tid: field(1) as u32,
            stack: field(0),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u32, tgid: u32, held: u32, fields: &[u64]) -> Vec<u8> {
        let mut b = Vec::new();
        for w in [kind, tgid, 99, held] {
            b.extend_from_slice(&w.to_ne_bytes());
        }
        for f in fields {
            b.extend_from_slice(&f.to_ne_bytes());
        }
        b
    }

    #[test]
    fn each_kind_decodes_its_named_fields() {
        let c = decode(&record(
            abi::EV_CHECKPOINT,
            7,
            1,
            &[41, 6, 0, 100, 2, 300, 2, 5000, 17],
        ))
        .unwrap();
        assert_eq!(
            c,
            Event::Checkpoint(Checkpoint {
                tgid: 7,
                tid: 99,
                by_open: false,
                held: true,
                table_seq: 41,
                version: 6,
                incremental: false,
                saved: 100,
                unreadable: 2,
                skipped: 300,
                stale: Stale::Overflow,
                ns: 5000,
                gup: 17,
            })
        );
        let r = decode(&record(
            abi::EV_RESTORE,
            7,
            0,
            &[10, 1, 3, 0, u64::MAX, 9, 1, 4],
        ))
        .unwrap();
        assert_eq!(
            r,
            Event::Restore(Restore {
                tgid: 7,
                tid: 99,
                by_open: false,
                held: false,
                written: 10,
                write_failed: 1,
                zeroed: 3,
                zero_failed: 0,
                zero_todo: ZeroTodo::Scan,
                ns: 9,
                partial: true,
                since_cleared: 4,
            })
        );
        let l = decode(&record(abi::EV_LAYOUT, 8, 0, &[12, 0])).unwrap();
        assert_eq!(
            decode(&record(abi::EV_CLONE, 8, 0, &[0x7000, 9])),
            Some(Event::Clone {
                tgid: 8,
                tid: 9,
                stack: 0x7000
            })
        );
        assert_eq!(l, Event::Layout { tgid: 8, seq: 12 });
        assert_eq!(
            decode(&record(abi::EV_EXEC, 9, 1, &[])),
            Some(Event::Exec {
                tgid: 9,
                held: true
            })
        );
    }

    #[test]
    fn short_records_and_unknown_kinds_are_ignored() {
        let c = record(abi::EV_CHECKPOINT, 7, 1, &[1, 2, 0, 3, 4, 5, 0, 6, 0]);
        assert!(decode(&c[..c.len() - 1]).is_none());
        assert!(decode(&record(77, 1, 0, &[0; 6])).is_none());
        assert!(decode(&[0; 8]).is_none());
        // An unknown stale code trusts nothing.
        let c = decode(&record(
            abi::EV_CHECKPOINT,
            7,
            1,
            &[1, 2, 0, 3, 4, 5, 9, 6, 0],
        ))
        .unwrap();
        assert!(matches!(
            c,
            Event::Checkpoint(Checkpoint {
                stale: Stale::Layout,
                ..
            })
        ));
    }
}
