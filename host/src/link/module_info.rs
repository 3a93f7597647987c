//! What the linker needs to know of one core module before merging it: its imports, its
//! exports, and how many items of each kind it defines.

use std::collections::HashMap;

use wasmparser::{Import, Parser, Payload, TypeRef};

use super::LinkError;
use super::items::{SPACES, Space};

pub(super) struct ModuleInfo<'a> {
    pub(super) imports: Vec<Import<'a>>,
    /// Per space, the positions in `imports` of that space's imports, in index order.
    pub(super) imports_of: [Vec<usize>; SPACES],
    pub(super) defined: [u32; SPACES],
    pub(super) types: u32,
    pub(super) elements: u32,
    pub(super) data: u32,
    pub(super) exports: HashMap<&'a str, (Space, u32)>,
    pub(super) uses_memory: bool,
    pub(super) has_start: bool,
}

impl ModuleInfo<'_> {
    pub(super) fn imported(&self, space: Space) -> u32 {
        self.imports_of[space.slot()].len() as u32
    }
}

pub(super) fn space_of_import(ty: &TypeRef) -> Space {
    match ty {
        TypeRef::Func(_) | TypeRef::FuncExact(_) => Space::Func,
        TypeRef::Table(_) => Space::Table,
        TypeRef::Memory(_) => Space::Memory,
        TypeRef::Global(_) => Space::Global,
        TypeRef::Tag(_) => Space::Tag,
    }
}

pub(super) fn read_module_info(module: &[u8]) -> Result<ModuleInfo<'_>, LinkError> {
    let mut info = ModuleInfo {
        imports: Vec::new(),
        imports_of: Default::default(),
        defined: [0; SPACES],
        types: 0,
        elements: 0,
        data: 0,
        exports: HashMap::new(),
        uses_memory: false,
        has_start: false,
    };
    for payload in Parser::new(0).parse_all(module) {
        match payload? {
            Payload::TypeSection(section) => {
                for group in section {
                    info.types += group?.types().len() as u32;
                }
            }
            Payload::ImportSection(section) => {
                for import in section.into_imports() {
                    let import = import?;
                    let space = space_of_import(&import.ty);
                    info.imports_of[space.slot()].push(info.imports.len());
                    info.imports.push(import);
                }
            }
            Payload::FunctionSection(section) => info.defined[Space::Func.slot()] = section.count(),
            Payload::TableSection(section) => info.defined[Space::Table.slot()] = section.count(),
            Payload::MemorySection(section) => info.defined[Space::Memory.slot()] = section.count(),
            Payload::GlobalSection(section) => info.defined[Space::Global.slot()] = section.count(),
            Payload::TagSection(section) => info.defined[Space::Tag.slot()] = section.count(),
            Payload::ElementSection(section) => info.elements = section.count(),
            Payload::DataSection(section) => info.data = section.count(),
            Payload::StartSection { .. } => info.has_start = true,
            Payload::ExportSection(section) => {
                for export in section {
                    let export = export?;
                    info.exports
                        .insert(export.name, (Space::of_core(export.kind), export.index));
                }
            }
            _ => {}
        }
    }
    info.uses_memory = info.defined[Space::Memory.slot()] > 0 || info.imported(Space::Memory) > 0;
    Ok(info)
}
