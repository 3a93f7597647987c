//! Encoding the merged core module: every member's definitions, renumbered into one index
//! space per kind, with imports between members turned into direct references.
//!
//! Offsets that read an immutable global with a constant value (the linker's
//! `__table_base` and `__memory_base`) are folded into constants, so every element segment
//! has a constant offset and wasmtime can initialise the table lazily.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use wasm_encoder::reencode::{Error, Reencode, utils};
use wasm_encoder::{
    CodeSection, ConstExpr, DataCountSection, DataSection, ElementSection, Elements, EntityType,
    ExportKind, ExportSection, FunctionSection, GlobalSection, ImportSection, MemorySection,
    Module, TableSection, TagSection, TypeSection,
};
use wasmparser::{Operator, Parser, Payload};

use super::LinkError;
use super::immortal::Patches;
use super::items::{SPACES, Space};
use super::module_info::ModuleInfo;

/// Where an item a member uses really lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Target {
    /// Defined by member `member` at `index` of that module's own index space.
    Defined {
        member: usize,
        space: Space,
        index: u32,
    },
    /// A component-level core item the merged module imports.
    External { space: Space, index: u32 },
}

impl Target {
    pub(super) fn space(self) -> Space {
        match self {
            Target::Defined { space, .. } | Target::External { space, .. } => space,
        }
    }
}

/// One module to merge: its bytes, what it is, and the target of each of its imports.
pub(super) struct Member<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) info: &'a ModuleInfo<'a>,
    pub(super) import_targets: Vec<Target>,
}

/// The merged module's index spaces, worked out before anything is encoded.
pub(super) struct Layout {
    /// External targets in import order, per space.
    externals: [Vec<Target>; SPACES],
    external_index: HashMap<Target, u32>,
    /// Per member and space, the merged index of each of the member's own indices.
    maps: Vec<[Vec<u32>; SPACES]>,
    type_bases: Vec<u32>,
    element_bases: Vec<u32>,
    data_bases: Vec<u32>,
}

impl Layout {
    pub(super) fn new(members: &[Member<'_>]) -> Layout {
        let mut externals: [Vec<Target>; SPACES] = Default::default();
        let mut external_index: HashMap<Target, u32> = HashMap::new();
        for member in members {
            for target in &member.import_targets {
                if let Target::External { space, .. } = *target {
                    external_index.entry(*target).or_insert_with(|| {
                        externals[space.slot()].push(*target);
                        externals[space.slot()].len() as u32 - 1
                    });
                }
            }
        }
        let mut defined_bases = Vec::with_capacity(members.len());
        let mut next: [u32; SPACES] = std::array::from_fn(|slot| externals[slot].len() as u32);
        let (mut types, mut elements, mut data) = (0, 0, 0);
        let (mut type_bases, mut element_bases, mut data_bases) = (vec![], vec![], vec![]);
        for member in members {
            defined_bases.push(next);
            for (slot, count) in member.info.defined.iter().enumerate() {
                next[slot] += count;
            }
            type_bases.push(types);
            element_bases.push(elements);
            data_bases.push(data);
            types += member.info.types;
            elements += member.info.elements;
            data += member.info.data;
        }
        let merged = |target: Target| match target {
            Target::Defined {
                member,
                space,
                index,
            } => defined_bases[member][space.slot()] + index - members[member].info.imported(space),
            Target::External { .. } => external_index[&target],
        };
        let maps = members
            .iter()
            .enumerate()
            .map(|(member, m)| {
                std::array::from_fn(|slot| {
                    let imported = m.info.imports_of[slot]
                        .iter()
                        .map(|&position| merged(m.import_targets[position]));
                    let base = defined_bases[member][slot];
                    imported
                        .chain((0..m.info.defined[slot]).map(|i| base + i))
                        .collect()
                })
            })
            .collect();
        Layout {
            externals,
            external_index,
            maps,
            type_bases,
            element_bases,
            data_bases,
        }
    }

    /// The merged index of `target`.
    pub(super) fn index_of(&self, target: Target) -> u32 {
        match target {
            Target::Defined {
                member,
                space,
                index,
            } => self.maps[member][space.slot()][index as usize],
            Target::External { .. } => self.external_index[&target],
        }
    }

    /// The external items, per space, in the order the merged module imports them.
    pub(super) fn externals(&self) -> &[Vec<Target>; SPACES] {
        &self.externals
    }
}

/// The merged module's import names: one module name, one short field per item.
pub(super) fn import_name(space: Space, position: usize) -> String {
    format!("{}{position}", letter(space))
}

impl Layout {
    /// The merged module's export name for `target`.
    pub(super) fn export_name(&self, target: Target) -> String {
        format!("{}{}", letter(target.space()), self.index_of(target))
    }
}

fn letter(space: Space) -> char {
    match space {
        Space::Func => 'f',
        Space::Table => 't',
        Space::Memory => 'm',
        Space::Global => 'g',
        Space::Tag => 'e',
        Space::Module | Space::Instance => unreachable!("not a core item kind"),
    }
}

pub(super) fn export_kind(space: Space) -> ExportKind {
    match space {
        Space::Func => ExportKind::Func,
        Space::Table => ExportKind::Table,
        Space::Memory => ExportKind::Memory,
        Space::Global => ExportKind::Global,
        Space::Tag => ExportKind::Tag,
        Space::Module | Space::Instance => unreachable!("not a core item kind"),
    }
}

/// Renumbers one member's definitions into the merged module.
struct MemberReencoder<'l> {
    maps: &'l [Vec<u32>; SPACES],
    type_base: u32,
    element_base: u32,
    data_base: u32,
    /// Immutable merged globals whose value is a constant, by merged index.
    constant_globals: &'l RefCell<HashMap<u32, ConstExpr>>,
}

impl MemberReencoder<'_> {
    fn map(&self, space: Space, index: u32) -> Result<u32, Error<LinkError>> {
        self.maps[space.slot()]
            .get(index as usize)
            .copied()
            .ok_or_else(|| {
                Error::UserError(LinkError::Unsupported(format!(
                    "{space:?} index {index} out of range"
                )))
            })
    }

    /// `expr` as a constant, when it is one or reads a global with a constant value.
    fn constant(&mut self, expr: &wasmparser::ConstExpr<'_>) -> Option<ConstExpr> {
        let mut operators = expr.get_operators_reader();
        let first = operators.read().ok()?;
        if !operators.is_end_then_eof() {
            return None;
        }
        match first {
            Operator::I32Const { value } => Some(ConstExpr::i32_const(value)),
            Operator::I64Const { value } => Some(ConstExpr::i64_const(value)),
            Operator::GlobalGet { global_index } => {
                let merged = self.map(Space::Global, global_index).ok()?;
                self.constant_globals.borrow().get(&merged).cloned()
            }
            _ => None,
        }
    }
}

impl Reencode for MemberReencoder<'_> {
    type Error = LinkError;

    fn type_index(&mut self, ty: u32) -> Result<u32, Error<LinkError>> {
        Ok(self.type_base + ty)
    }
    fn function_index(&mut self, func: u32) -> Result<u32, Error<LinkError>> {
        self.map(Space::Func, func)
    }
    fn table_index(&mut self, table: u32) -> Result<u32, Error<LinkError>> {
        self.map(Space::Table, table)
    }
    fn memory_index(&mut self, memory: u32) -> Result<u32, Error<LinkError>> {
        self.map(Space::Memory, memory)
    }
    fn global_index(&mut self, global: u32) -> Result<u32, Error<LinkError>> {
        self.map(Space::Global, global)
    }
    fn tag_index(&mut self, tag: u32) -> Result<u32, Error<LinkError>> {
        self.map(Space::Tag, tag)
    }
    fn element_index(&mut self, element: u32) -> Result<u32, Error<LinkError>> {
        Ok(self.element_base + element)
    }
    fn data_index(&mut self, data: u32) -> Result<u32, Error<LinkError>> {
        Ok(self.data_base + data)
    }

    fn const_expr(
        &mut self,
        expr: wasmparser::ConstExpr<'_>,
    ) -> Result<ConstExpr, Error<LinkError>> {
        match self.constant(&expr) {
            Some(constant) => Ok(constant),
            None => utils::const_expr(self, expr),
        }
    }

    /// Segments of `ref.func` expressions become plain function lists: wasmtime only
    /// initialises a table lazily from those.
    fn element_items<'a>(
        &mut self,
        items: wasmparser::ElementItems<'a>,
    ) -> Result<Elements<'a>, Error<LinkError>> {
        if let wasmparser::ElementItems::Expressions(_, exprs) = &items {
            let mut functions = Vec::new();
            for expr in exprs.clone() {
                let mut operators = expr?.get_operators_reader();
                match operators.read()? {
                    Operator::RefFunc { function_index } if operators.is_end_then_eof() => {
                        functions.push(self.function_index(function_index)?)
                    }
                    _ => return utils::element_items(self, items),
                }
            }
            return Ok(Elements::Functions(Cow::Owned(functions)));
        }
        utils::element_items(self, items)
    }
}

/// Encodes the merged module, exporting `exports` (name, space, merged index), with
/// `patches` applied to the members' data segments.
pub(super) fn encode(
    members: &[Member<'_>],
    layout: &Layout,
    exports: &[(String, Space, u32)],
    patches: &Patches,
) -> Result<Vec<u8>, LinkError> {
    let mut types = TypeSection::new();
    let mut imports = ImportSection::new();
    let mut functions = FunctionSection::new();
    let mut tables = TableSection::new();
    let mut memories = MemorySection::new();
    let mut tags = TagSection::new();
    let mut globals = GlobalSection::new();
    let mut elements = ElementSection::new();
    let mut code = CodeSection::new();
    let mut data = DataSection::new();
    let constant_globals = RefCell::new(HashMap::new());
    // Kept for wasmtime's trap backtraces, which name functions from this section.
    let mut function_names = BTreeMap::new();
    let mut next_global = layout.externals[Space::Global.slot()].len() as u32;

    // Imports first: their types come from the first member that imports each item.
    let mut import_types: HashMap<Target, EntityType> = HashMap::new();
    for (member, m) in members.iter().enumerate() {
        let mut reencoder = reencoder(layout, member, &constant_globals);
        for (import, target) in m.info.imports.iter().zip(&m.import_targets) {
            if matches!(target, Target::External { .. }) && !import_types.contains_key(target) {
                import_types.insert(*target, reencoder.entity_type(import.ty)?);
            }
        }
    }
    for externals in &layout.externals {
        for (position, target) in externals.iter().enumerate() {
            let Target::External { space, .. } = target else {
                unreachable!("only external targets are imported")
            };
            imports.import("", &import_name(*space, position), import_types[target]);
        }
    }

    for (member, m) in members.iter().enumerate() {
        for payload in Parser::new(0).parse_all(m.bytes) {
            let mut reencoder = reencoder(layout, member, &constant_globals);
            match payload? {
                Payload::TypeSection(section) => {
                    for group in section {
                        reencoder.parse_recursive_type_group(types.ty(), group?)?;
                    }
                }
                Payload::FunctionSection(section) => {
                    for ty in section {
                        functions.function(reencoder.type_index(ty?)?);
                    }
                }
                Payload::TableSection(section) => {
                    for table in section {
                        reencoder.parse_table(&mut tables, table?)?;
                    }
                }
                Payload::MemorySection(section) => {
                    for memory in section {
                        memories.memory(reencoder.memory_type(memory?)?);
                    }
                }
                Payload::TagSection(section) => {
                    for tag in section {
                        tags.tag(reencoder.tag_type(tag?)?);
                    }
                }
                Payload::GlobalSection(section) => {
                    for global in section {
                        let global = global?;
                        let init = reencoder.const_expr(global.init_expr.clone())?;
                        if !global.ty.mutable
                            && let Some(constant) = reencoder.constant(&global.init_expr)
                        {
                            constant_globals.borrow_mut().insert(next_global, constant);
                        }
                        globals.global(reencoder.global_type(global.ty)?, &init);
                        next_global += 1;
                    }
                }
                Payload::ElementSection(section) => {
                    for element in section {
                        reencoder.parse_element(&mut elements, element?)?;
                    }
                }
                Payload::CodeSectionEntry(body) => {
                    reencoder.parse_function_body(&mut code, body)?;
                }
                Payload::DataSection(section) => {
                    for (index, datum) in section.into_iter().enumerate() {
                        let datum = datum?;
                        match (
                            patches.apply(member, index as u32, datum.data),
                            datum.kind.clone(),
                        ) {
                            (
                                Some(patched),
                                wasmparser::DataKind::Active {
                                    memory_index,
                                    offset_expr,
                                },
                            ) => {
                                let memory = reencoder.memory_index(memory_index)?;
                                let offset = reencoder.const_expr(offset_expr)?;
                                data.active(memory, &offset, patched);
                            }
                            _ => reencoder.parse_data(&mut data, datum)?,
                        }
                    }
                }
                Payload::CustomSection(section) => {
                    if let wasmparser::KnownCustom::Name(names) = section.as_known() {
                        collect_function_names(&mut reencoder, m, names, &mut function_names);
                    }
                }
                _ => {}
            }
        }
    }

    let mut export_section = ExportSection::new();
    for (name, space, index) in exports {
        export_section.export(name, export_kind(*space), *index);
    }

    // An empty section still names its proposal (a tag section needs exceptions).
    let mut module = Module::new();
    add_unless_empty(&mut module, &types, types.is_empty());
    add_unless_empty(&mut module, &imports, imports.is_empty());
    add_unless_empty(&mut module, &functions, functions.is_empty());
    add_unless_empty(&mut module, &tables, tables.is_empty());
    add_unless_empty(&mut module, &memories, memories.is_empty());
    add_unless_empty(&mut module, &tags, tags.is_empty());
    add_unless_empty(&mut module, &globals, globals.is_empty());
    add_unless_empty(&mut module, &export_section, export_section.is_empty());
    add_unless_empty(&mut module, &elements, elements.is_empty());
    let data_count = DataCountSection { count: data.len() };
    add_unless_empty(&mut module, &data_count, data.is_empty());
    add_unless_empty(&mut module, &code, code.is_empty());
    add_unless_empty(&mut module, &data, data.is_empty());
    let mut names = wasm_encoder::NameMap::new();
    for (index, name) in &function_names {
        names.append(*index, name);
    }
    let mut name_section = wasm_encoder::NameSection::new();
    name_section.functions(&names);
    add_unless_empty(&mut module, &name_section, function_names.is_empty());
    Ok(module.finish())
}

/// A member's own function names, under their merged indices. A malformed name section
/// only costs names, so it is skipped rather than refused.
fn collect_function_names<'a>(
    reencoder: &mut MemberReencoder<'_>,
    member: &Member<'_>,
    names: wasmparser::NameSectionReader<'a>,
    into: &mut BTreeMap<u32, &'a str>,
) {
    let imported = member.info.imported(Space::Func);
    for subsection in names.into_iter().flatten() {
        let wasmparser::Name::Function(map) = subsection else {
            continue;
        };
        for naming in map.into_iter().flatten() {
            if naming.index >= imported
                && let Ok(merged) = reencoder.function_index(naming.index)
            {
                into.insert(merged, naming.name);
            }
        }
    }
}

fn add_unless_empty(module: &mut Module, section: &impl wasm_encoder::Section, empty: bool) {
    if !empty {
        module.section(section);
    }
}

fn reencoder<'l>(
    layout: &'l Layout,
    member: usize,
    constant_globals: &'l RefCell<HashMap<u32, ConstExpr>>,
) -> MemberReencoder<'l> {
    MemberReencoder {
        maps: &layout.maps[member],
        type_base: layout.type_bases[member],
        element_base: layout.element_bases[member],
        data_base: layout.data_bases[member],
        constant_globals,
    }
}

impl From<Error<LinkError>> for LinkError {
    fn from(error: Error<LinkError>) -> LinkError {
        match error {
            Error::UserError(error) => error,
            other => LinkError::Reencode(other.to_string()),
        }
    }
}
