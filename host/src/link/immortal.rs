//! CPython's snapshot objects made immortal in the merged module's memory image.
//!
//! A fresh Python instance changes the reference count of every object it touches, which
//! writes to a few hundred pages of the snapshot, each a copy-on-write fault on the host and
//! a page to reset after the task. The Python SDK leaves in the snapshot a table of the
//! objects alive at build time (`guest-sdk/python/celeriac_sdk/immortal.py` documents its
//! format); here, their reference counts in the data segments are set to CPython 3.14's
//! immortal value for 32-bit targets, so the interpreter no longer writes them.
//!
//! An object is patched only where the image still holds a live header for it: a small
//! reference count and the type the table recorded. An object freed after the table was
//! made has a free-list pointer or zero where its count was, and is left alone.

use std::collections::HashMap;

use wasmparser::{DataKind, Operator, Parser, Payload};

use super::LinkError;
use super::merge::Member;

/// Starts the table in the image (`MARKER` in `immortal.py`).
const MARKER: &[u8; 17] = b"celeriac\x00immortal";
const VERSION: u32 = 1;
/// `_Py_IMMORTAL_INITIAL_REFCNT` of CPython 3.14 (componentize-py's, pinned by
/// `scripts/install-guest-tools.sh`) on 32-bit targets: objects whose count is at least
/// `1 << 30` are immortal; counting starts from here for heap objects.
const IMMORTAL_REFCNT: u32 = 5 << 28;
/// A larger word where a count should be is taken for a pointer: CPython's heap lies above
/// the first 64 KiB of memory (the stack and static data come first), so a free-list link
/// is never mistaken for a live object's count.
const MAX_PLAUSIBLE_REFCNT: u32 = 1 << 16;

/// One active data segment at a constant address.
struct Segment<'a> {
    member: usize,
    index: u32,
    address: u32,
    bytes: &'a [u8],
}

impl Segment<'_> {
    fn end(&self) -> u64 {
        u64::from(self.address) + self.bytes.len() as u64
    }

    /// The four bytes at linear-memory address `address`, if this segment holds them.
    fn word(&self, address: u32) -> Option<u32> {
        let start = address.checked_sub(self.address)? as usize;
        let bytes = self.bytes.get(start..start.checked_add(4)?)?;
        Some(u32::from_le_bytes(bytes.try_into().ok()?))
    }
}

/// Byte positions, per (member, data segment), where the immortal count is written.
#[derive(Default)]
pub(super) struct Patches {
    positions: HashMap<(usize, u32), Vec<usize>>,
    /// How many objects were made immortal.
    pub(super) objects: usize,
}

impl Patches {
    /// `bytes` of segment `index` of `member`, with its patches applied; `None` when it has
    /// none.
    pub(super) fn apply(&self, member: usize, index: u32, bytes: &[u8]) -> Option<Vec<u8>> {
        let positions = self.positions.get(&(member, index))?;
        let mut patched = bytes.to_vec();
        for &position in positions {
            patched[position..position + 4].copy_from_slice(&IMMORTAL_REFCNT.to_le_bytes());
        }
        Some(patched)
    }
}

/// The patches for the objects listed in the members' table; none when no member's data
/// holds a well-formed table.
pub(super) fn plan(members: &[Member<'_>]) -> Result<Patches, LinkError> {
    let image = Image::new(constant_segments(members)?);
    let Some(entries) = image.segments.iter().find_map(|s| find_table(s.bytes)) else {
        return Ok(Patches::default());
    };
    let mut patches = Patches::default();
    for (address, ty) in entries {
        let Some(type_address) = address.checked_add(4) else {
            continue;
        };
        let holding = image.holding(address);
        // Segments are initialised in order: the last one holding the header decides.
        let live = holding.last().is_some_and(|segment| {
            segment.word(type_address) == Some(ty)
                && segment
                    .word(address)
                    .is_some_and(|count| (1..=MAX_PLAUSIBLE_REFCNT).contains(&count))
        });
        if !live {
            continue;
        }
        for segment in holding {
            patches
                .positions
                .entry((segment.member, segment.index))
                .or_default()
                .push((address - segment.address) as usize);
        }
        patches.objects += 1;
    }
    Ok(patches)
}

/// The constant segments, searchable by address.
struct Image<'a> {
    /// In initialisation order.
    segments: Vec<Segment<'a>>,
    /// Positions in `segments`, by start address.
    by_address: Vec<usize>,
    /// Per entry of `by_address`, the furthest end of the segments up to it.
    furthest_end: Vec<u64>,
}

impl<'a> Image<'a> {
    fn new(segments: Vec<Segment<'a>>) -> Image<'a> {
        let mut by_address: Vec<usize> = (0..segments.len()).collect();
        by_address.sort_by_key(|&position| segments[position].address);
        let mut furthest = 0;
        let furthest_end = by_address
            .iter()
            .map(|&position| {
                furthest = furthest.max(segments[position].end());
                furthest
            })
            .collect();
        Image {
            segments,
            by_address,
            furthest_end,
        }
    }

    /// The segments holding the whole 8-byte object header at `address`, in initialisation
    /// order.
    fn holding(&self, address: u32) -> Vec<&Segment<'a>> {
        let header_end = u64::from(address) + 8;
        let starts_before = self
            .by_address
            .partition_point(|&position| self.segments[position].address <= address);
        let mut holding: Vec<usize> = (0..starts_before)
            .rev()
            .take_while(|&i| self.furthest_end[i] >= header_end)
            .map(|i| self.by_address[i])
            .filter(|&position| self.segments[position].end() >= header_end)
            .collect();
        holding.sort_unstable();
        holding
            .iter()
            .map(|&position| &self.segments[position])
            .collect()
    }
}

/// Every member's active segments whose address is an `i32.const`, in initialisation order.
fn constant_segments<'a>(members: &[Member<'a>]) -> Result<Vec<Segment<'a>>, LinkError> {
    let mut segments = Vec::new();
    for (member, m) in members.iter().enumerate() {
        for payload in Parser::new(0).parse_all(m.bytes) {
            let Payload::DataSection(section) = payload? else {
                continue;
            };
            for (index, datum) in section.into_iter().enumerate() {
                let datum = datum?;
                let DataKind::Active { offset_expr, .. } = datum.kind else {
                    continue;
                };
                let mut operators = offset_expr.get_operators_reader();
                if let Operator::I32Const { value } = operators.read()?
                    && operators.is_end_then_eof()
                {
                    segments.push(Segment {
                        member,
                        index: index as u32,
                        address: value as u32,
                        bytes: datum.data,
                    });
                }
            }
        }
    }
    Ok(segments)
}

/// The (address, type address) entries of the table in `bytes`, if it holds a well-formed
/// one: the right version, its entries inside the segment and the checksum matching.
fn find_table(bytes: &[u8]) -> Option<Vec<(u32, u32)>> {
    let mut from = 0;
    while let Some(found) = bytes[from..]
        .windows(MARKER.len())
        .position(|window| window == MARKER)
    {
        let start = from + found + MARKER.len();
        if let Some(entries) = read_table(&bytes[start..]) {
            return Some(entries);
        }
        from = start;
    }
    None
}

fn read_table(bytes: &[u8]) -> Option<Vec<(u32, u32)>> {
    let mut words = bytes
        .chunks_exact(4)
        .map(|word| u32::from_le_bytes([word[0], word[1], word[2], word[3]]));
    let (version, count, checksum) = (words.next()?, words.next()?, words.next()?);
    if version != VERSION {
        return None;
    }
    let mut entries = Vec::with_capacity(count.min(1 << 20) as usize);
    let mut sum = 0u32;
    for _ in 0..count {
        let (address, ty) = (words.next()?, words.next()?);
        sum = sum.wrapping_add(address).wrapping_add(ty);
        entries.push((address, ty));
    }
    (sum == checksum).then_some(entries)
}
