//! A component's top-level definitions, one item each, in binary order.
//!
//! The linker moves and drops core definitions, so it needs them one by one rather than as
//! sections. Definitions it never changes (types, imports, nested components, custom
//! sections) stay whole sections copied byte for byte.

use std::ops::Range;

use wasmparser::{
    CanonicalFunction, ComponentAlias, ComponentExport, ComponentExternalKind, ComponentInstance,
    ComponentOuterAliasKind, ComponentTypeRef, ExternalKind, Instance, Parser, Payload,
};

use super::LinkError;

/// The core index spaces the linker renumbers. Component-level spaces never change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Space {
    Module,
    Instance,
    Func,
    Table,
    Memory,
    Global,
    Tag,
}

pub(super) const SPACES: usize = 7;

impl Space {
    /// Every space, in slot order.
    pub(super) const ALL: [Space; SPACES] = [
        Space::Module,
        Space::Instance,
        Space::Func,
        Space::Table,
        Space::Memory,
        Space::Global,
        Space::Tag,
    ];

    pub(super) fn slot(self) -> usize {
        self as usize
    }

    pub(super) fn of_core(kind: ExternalKind) -> Space {
        match kind {
            ExternalKind::Func | ExternalKind::FuncExact => Space::Func,
            ExternalKind::Table => Space::Table,
            ExternalKind::Memory => Space::Memory,
            ExternalKind::Global => Space::Global,
            ExternalKind::Tag => Space::Tag,
        }
    }
}

/// One top-level definition (or, for [`Item::Raw`], one untouched section).
#[derive(Debug)]
pub(super) enum Item<'a> {
    /// A section copied as it is: its id and the byte range of its contents.
    Raw {
        id: u8,
        contents: Range<usize>,
    },
    /// A core module: the byte range of its binary.
    Module(Range<usize>),
    CoreInstance(Instance<'a>),
    Alias(ComponentAlias<'a>),
    Canon(CanonicalFunction),
    ComponentInstance(ComponentInstance<'a>),
    Export(ComponentExport<'a>),
}

impl Item<'_> {
    /// The core index this item defines, if any.
    pub(super) fn defines(&self) -> Option<Space> {
        match self {
            Item::Module(_) => Some(Space::Module),
            Item::CoreInstance(_) => Some(Space::Instance),
            Item::Alias(ComponentAlias::CoreInstanceExport { kind, .. }) => {
                Some(Space::of_core(*kind))
            }
            Item::Canon(CanonicalFunction::Lift { .. }) => None,
            Item::Canon(_) => Some(Space::Func),
            _ => None,
        }
    }
}

/// Splits `component` into items, refusing what the linker cannot renumber safely.
pub(super) fn read_items(component: &[u8]) -> Result<Vec<Item<'_>>, LinkError> {
    let mut items = Vec::new();
    let mut depth = 0u32;
    for payload in Parser::new(0).parse_all(component) {
        let payload = payload?;
        match payload {
            Payload::Version { .. } => {
                depth += 1;
                continue;
            }
            Payload::End(_) => {
                depth -= 1;
                continue;
            }
            _ if depth > 1 => continue,
            _ => {}
        }
        match payload {
            Payload::ModuleSection {
                unchecked_range, ..
            } => items.push(Item::Module(unchecked_range)),
            Payload::ComponentSection {
                unchecked_range, ..
            } => items.push(Item::Raw {
                id: wasm_encoder::ComponentSectionId::Component as u8,
                contents: unchecked_range,
            }),
            Payload::InstanceSection(section) => {
                push_each(&mut items, section, Item::CoreInstance)?
            }
            Payload::ComponentAliasSection(section) => {
                for alias in section {
                    let alias = alias?;
                    if defines_module(&alias) {
                        return Err(unsupported("an alias that defines a core module"));
                    }
                    items.push(Item::Alias(alias));
                }
            }
            Payload::ComponentCanonicalSection(section) => {
                push_each(&mut items, section, Item::Canon)?
            }
            Payload::ComponentInstanceSection(section) => {
                push_each(&mut items, section, Item::ComponentInstance)?
            }
            Payload::ComponentExportSection(section) => {
                for export in section {
                    let export = export?;
                    if export.kind == ComponentExternalKind::Module {
                        return Err(unsupported("a core module export"));
                    }
                    items.push(Item::Export(export));
                }
            }
            Payload::ComponentImportSection(section) => {
                let contents = section.range();
                for import in section {
                    if matches!(import?.ty, ComponentTypeRef::Module(_)) {
                        return Err(unsupported("a core module import"));
                    }
                }
                items.push(raw(wasm_encoder::ComponentSectionId::Import, contents));
            }
            Payload::ComponentTypeSection(section) => {
                items.push(raw(wasm_encoder::ComponentSectionId::Type, section.range()));
            }
            Payload::CoreTypeSection(section) => {
                items.push(raw(
                    wasm_encoder::ComponentSectionId::CoreType,
                    section.range(),
                ));
            }
            // Names are by index and the indices change; they only serve debugging.
            Payload::CustomSection(section) if section.name() == "component-name" => {}
            Payload::CustomSection(section) => {
                let contents = section.range();
                items.push(Item::Raw {
                    id: wasm_encoder::ComponentSectionId::CoreCustom as u8,
                    contents,
                });
            }
            Payload::ComponentStartSection { .. } => {
                return Err(unsupported("a component start function"));
            }
            other => {
                return Err(unsupported(&format!(
                    "a section the linker does not know ({other:?})"
                )));
            }
        }
    }
    Ok(items)
}

/// Appends one item per entry of `section`.
fn push_each<'a, T: wasmparser::FromReader<'a>>(
    items: &mut Vec<Item<'a>>,
    section: wasmparser::SectionLimited<'a, T>,
    item: impl Fn(T) -> Item<'a>,
) -> Result<(), LinkError> {
    for entry in section {
        items.push(item(entry?));
    }
    Ok(())
}

fn raw(id: wasm_encoder::ComponentSectionId, contents: Range<usize>) -> Item<'static> {
    Item::Raw {
        id: id as u8,
        contents,
    }
}

fn defines_module(alias: &ComponentAlias<'_>) -> bool {
    match alias {
        ComponentAlias::InstanceExport { kind, .. } => *kind == ComponentExternalKind::Module,
        ComponentAlias::Outer { kind, .. } => *kind == ComponentOuterAliasKind::CoreModule,
        ComponentAlias::CoreInstanceExport { .. } => false,
    }
}

fn unsupported(what: &str) -> LinkError {
    LinkError::Unsupported(what.to_string())
}
