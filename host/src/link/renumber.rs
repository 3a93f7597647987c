//! Re-encoding component items under new core indices, and finding what each item uses.
//!
//! Both go through wasm-encoder's reencoder hooks, so the references an item is found to
//! use are exactly the indices its re-encoding renumbers.

use std::collections::HashMap;

use wasm_encoder::reencode::{Error, Reencode, ReencodeComponent, component_utils};
use wasm_encoder::{
    CanonicalFunctionSection, Component, ComponentAliasSection, ComponentExportSection,
    ComponentInstanceSection, InstanceSection, RawSection,
};

use super::items::{Item, SPACES, Space};

/// Maps old core indices to new ones; with no map, records every index it is asked about.
#[derive(Default)]
pub(super) struct Renumber {
    maps: Option<[HashMap<u32, u32>; SPACES]>,
    pub(super) used: Vec<(Space, u32)>,
    missing: Option<(Space, u32)>,
}

impl Renumber {
    pub(super) fn recorder() -> Renumber {
        Renumber::default()
    }

    pub(super) fn mapping(maps: [HashMap<u32, u32>; SPACES]) -> Renumber {
        Renumber {
            maps: Some(maps),
            ..Renumber::default()
        }
    }

    fn index(&mut self, space: Space, old: u32) -> u32 {
        match &self.maps {
            None => {
                self.used.push((space, old));
                old
            }
            Some(maps) => match maps[space.slot()].get(&old) {
                Some(new) => *new,
                None => {
                    self.missing.get_or_insert((space, old));
                    u32::MAX
                }
            },
        }
    }

    /// The new number of `old` in a core item space, or `None` when it was dropped.
    pub(super) fn renumbered(&mut self, space: Space, old: u32) -> Option<u32> {
        let new = self.index(space, old);
        self.take_missing().is_none().then_some(new)
    }

    /// The first index asked for that has no new number (a use of a dropped definition).
    pub(super) fn take_missing(&mut self) -> Option<(Space, u32)> {
        self.missing.take()
    }
}

impl Reencode for Renumber {
    type Error = std::convert::Infallible;

    fn function_index(&mut self, func: u32) -> Result<u32, Error> {
        Ok(self.index(Space::Func, func))
    }
    fn table_index(&mut self, table: u32) -> Result<u32, Error> {
        Ok(self.index(Space::Table, table))
    }
    fn memory_index(&mut self, memory: u32) -> Result<u32, Error> {
        Ok(self.index(Space::Memory, memory))
    }
    fn global_index(&mut self, global: u32) -> Result<u32, Error> {
        Ok(self.index(Space::Global, global))
    }
    fn tag_index(&mut self, tag: u32) -> Result<u32, Error> {
        Ok(self.index(Space::Tag, tag))
    }
}

impl ReencodeComponent for Renumber {
    fn module_index(&mut self, module: u32) -> u32 {
        self.index(Space::Module, module)
    }
    fn instance_index(&mut self, instance: u32) -> u32 {
        self.index(Space::Instance, instance)
    }
}

/// Which kind of section an item goes into; consecutive items of one kind share a section.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SectionKind {
    CoreInstance,
    Alias,
    Canon,
    ComponentInstance,
    Export,
}

/// Builds a component from items, opening a new section whenever the kind changes.
pub(super) struct Sections {
    pub(super) component: Component,
    open: Option<Open>,
}

enum Open {
    CoreInstance(InstanceSection),
    Alias(ComponentAliasSection),
    Canon(CanonicalFunctionSection),
    ComponentInstance(ComponentInstanceSection),
    Export(ComponentExportSection),
}

impl Sections {
    pub(super) fn new() -> Sections {
        Sections {
            component: Component::new(),
            open: None,
        }
    }

    fn open(&mut self, kind: SectionKind) -> &mut Open {
        let same = matches!(
            (&self.open, kind),
            (Some(Open::CoreInstance(_)), SectionKind::CoreInstance)
                | (Some(Open::Alias(_)), SectionKind::Alias)
                | (Some(Open::Canon(_)), SectionKind::Canon)
                | (
                    Some(Open::ComponentInstance(_)),
                    SectionKind::ComponentInstance
                )
                | (Some(Open::Export(_)), SectionKind::Export)
        );
        if !same {
            self.flush();
        }
        self.open.get_or_insert_with(|| match kind {
            SectionKind::CoreInstance => Open::CoreInstance(InstanceSection::new()),
            SectionKind::Alias => Open::Alias(ComponentAliasSection::new()),
            SectionKind::Canon => Open::Canon(CanonicalFunctionSection::new()),
            SectionKind::ComponentInstance => {
                Open::ComponentInstance(ComponentInstanceSection::new())
            }
            SectionKind::Export => Open::Export(ComponentExportSection::new()),
        })
    }

    pub(super) fn flush(&mut self) {
        match self.open.take() {
            None => {}
            Some(Open::CoreInstance(s)) => {
                self.component.section(&s);
            }
            Some(Open::Alias(s)) => {
                self.component.section(&s);
            }
            Some(Open::Canon(s)) => {
                self.component.section(&s);
            }
            Some(Open::ComponentInstance(s)) => {
                self.component.section(&s);
            }
            Some(Open::Export(s)) => {
                self.component.section(&s);
            }
        }
    }

    pub(super) fn raw(&mut self, id: u8, data: &[u8]) {
        self.flush();
        self.component.section(&RawSection { id, data });
    }

    pub(super) fn core_instances(&mut self) -> &mut InstanceSection {
        match self.open(SectionKind::CoreInstance) {
            Open::CoreInstance(s) => s,
            _ => unreachable!("open returns the kind asked for"),
        }
    }

    pub(super) fn aliases(&mut self) -> &mut ComponentAliasSection {
        match self.open(SectionKind::Alias) {
            Open::Alias(s) => s,
            _ => unreachable!("open returns the kind asked for"),
        }
    }

    /// Re-encodes `item` through `renumber` into the right section.
    pub(super) fn item(
        &mut self,
        item: &Item<'_>,
        bytes: &[u8],
        renumber: &mut Renumber,
    ) -> Result<(), Error> {
        match item {
            Item::Raw { id, contents } => self.raw(*id, &bytes[contents.clone()]),
            Item::Module(range) => self.raw(
                wasm_encoder::ComponentSectionId::CoreModule as u8,
                &bytes[range.clone()],
            ),
            Item::CoreInstance(instance) => {
                let section = self.core_instances();
                component_utils::parse_instance(renumber, section, instance.clone())?;
            }
            Item::Alias(alias) => {
                let alias = renumber.component_alias(alias.clone())?;
                self.aliases().alias(alias);
            }
            Item::Canon(function) => {
                let Open::Canon(section) = self.open(SectionKind::Canon) else {
                    unreachable!("open returns the kind asked for")
                };
                component_utils::parse_component_canonical(renumber, section, function.clone())?;
            }
            Item::ComponentInstance(instance) => {
                let Open::ComponentInstance(section) = self.open(SectionKind::ComponentInstance)
                else {
                    unreachable!("open returns the kind asked for")
                };
                component_utils::parse_component_instance(renumber, section, instance.clone())?;
            }
            Item::Export(export) => {
                let Open::Export(section) = self.open(SectionKind::Export) else {
                    unreachable!("open returns the kind asked for")
                };
                component_utils::parse_component_export(renumber, section, export.clone())?;
            }
        }
        Ok(())
    }
}

/// The core indices `item` refers to.
pub(super) fn references(item: &Item<'_>, bytes: &[u8]) -> Vec<(Space, u32)> {
    if matches!(item, Item::Raw { .. } | Item::Module(_)) {
        return Vec::new();
    }
    let mut recorder = Renumber::recorder();
    let mut scratch = Sections::new();
    // Recording never fails: every index maps to itself.
    let _ = scratch.item(item, bytes, &mut recorder);
    recorder.used
}
