//! Static linking of a component's core modules that share one linear memory.
//!
//! componentize-py links CPython as dynamic libraries: `main`, libc, libpython, its runtime
//! and a few more are separate core modules that import one memory and one function table
//! from `main`, and each writes its functions into that imported table. wasmtime only
//! initialises a table lazily when the module that *defines* it holds the segments, so it
//! builds every entry (5,674 for the example module) on each instantiation of a Python task.
//!
//! [`link`] merges those modules into one: it defines the memory and the table, holds all
//! segments at constant offsets, and calls between former modules directly. The rest of
//! the component (the WASI adapter's shim and fixup, canonical functions, exports) stays
//! as it was, renumbered, with aliases of the old modules' exports pointing at the merged
//! one. When the Python SDK left a table of its snapshot's objects in the memory image, the
//! merged module's data segments mark those objects immortal (see `immortal`). The sandbox
//! links every component it compiles; a component the linker does not handle is compiled
//! as it is.

mod immortal;
mod items;
mod merge;
mod module_info;
mod renumber;

use std::collections::{HashMap, HashSet};

use wasm_encoder::{Alias, ModuleArg};
use wasmparser::{ComponentAlias, Instance};

use items::{Item, SPACES, Space};
use merge::{Layout, Member, Target};
use renumber::{Renumber, Sections};

/// Changes whenever [`link`] would produce different code for the same component, so
/// compiled artifacts of the old output are not reused.
pub const LINKER_VERSION: u32 = 2;

/// Why a component could not be linked; the component then stays as it was.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The component (or one of its modules) is not valid WebAssembly.
    #[error("cannot parse the component: {0}")]
    Parse(#[from] wasmparser::BinaryReaderError),
    /// wasm-encoder refused to re-encode an item.
    #[error("cannot re-encode the component: {0}")]
    Reencode(String),
    /// The component is built in a way the linker does not handle.
    #[error("the component holds {0}, which the linker does not handle")]
    Unsupported(String),
}

/// A component whose shared-memory modules were merged.
#[derive(Debug)]
pub struct Linked {
    /// The new component's binary.
    pub component: Vec<u8>,
    /// How many core modules became one.
    pub modules: usize,
    /// How many objects of a CPython snapshot were made immortal (see the Python SDK's
    /// `immortal` module); 0 for a component without the SDK's table.
    pub immortal_objects: usize,
}

/// Merges the core modules of `component` that share a memory, or `None` when fewer than
/// two do.
pub fn link(component: &[u8]) -> Result<Option<Linked>, LinkError> {
    // The linker follows indices without checking them; a valid component has them all.
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(component)?;
    let items = items::read_items(component)?;
    let graph = Graph::new(&items, component)?;
    if graph.members.len() < 2 {
        return Ok(None);
    }
    let members = graph.resolve_members()?;
    let layout = Layout::new(&members);
    let plan = graph.plan(&members)?;
    let exports = plan.exports(&layout);
    let patches = immortal::plan(&members)?;
    let merged = merge::encode(&members, &layout, &exports, &patches)?;
    Ok(Some(Linked {
        component: plan.emit(&graph, &layout, &merged)?,
        modules: members.len(),
        immortal_objects: patches.objects,
    }))
}

/// The component's items, indexed by what they define.
struct Graph<'a> {
    bytes: &'a [u8],
    items: &'a [Item<'a>],
    /// Item position of each core definition, by space and old index.
    definer: HashMap<(Space, u32), usize>,
    /// Old core index of each item that defines one.
    old_indices: Vec<u32>,
    /// What each member's module imports and exports.
    infos: Vec<module_info::ModuleInfo<'a>>,
    /// Old core instance index of each member, in instantiation order.
    members: Vec<u32>,
    member_of_instance: HashMap<u32, usize>,
    /// Old module index of each member's module.
    member_modules: Vec<u32>,
}

impl<'a> Graph<'a> {
    fn new(items: &'a [Item<'a>], bytes: &'a [u8]) -> Result<Graph<'a>, LinkError> {
        let mut definer = HashMap::new();
        let mut old_indices = vec![0; items.len()];
        let mut next = [0u32; SPACES];
        for (position, item) in items.iter().enumerate() {
            if let Some(space) = item.defines() {
                definer.insert((space, next[space.slot()]), position);
                old_indices[position] = next[space.slot()];
                next[space.slot()] += 1;
            }
        }
        let mut graph = Graph {
            bytes,
            items,
            definer,
            old_indices,
            infos: Vec::new(),
            members: Vec::new(),
            member_of_instance: HashMap::new(),
            member_modules: Vec::new(),
        };
        let mut instantiations: HashMap<u32, u32> = HashMap::new();
        for instance in 0..next[Space::Instance.slot()] {
            if let Item::CoreInstance(Instance::Instantiate { module_index, .. }) =
                graph.item(Space::Instance, instance)
            {
                *instantiations.entry(*module_index).or_default() += 1;
                let info = module_info::read_module_info(graph.module_bytes(*module_index))?;
                if info.uses_memory {
                    graph
                        .member_of_instance
                        .insert(instance, graph.members.len());
                    graph.members.push(instance);
                    graph.member_modules.push(*module_index);
                    graph.infos.push(info);
                }
            }
        }
        if graph
            .member_modules
            .iter()
            .any(|module| instantiations[module] > 1)
        {
            return Err(LinkError::Unsupported(
                "a module instantiated more than once".to_string(),
            ));
        }
        // The engine's pool allows one memory and one table per core module: modules with
        // memories or tables of their own would link into one it cannot instantiate.
        for (space, kinds) in [(Space::Memory, "memories"), (Space::Table, "tables")] {
            let defined: u32 = graph
                .infos
                .iter()
                .map(|info| info.defined[space.slot()])
                .sum();
            if defined > 1 {
                return Err(LinkError::Unsupported(format!(
                    "modules defining {defined} {kinds} between them"
                )));
            }
        }
        Ok(graph)
    }

    fn item(&self, space: Space, index: u32) -> &'a Item<'a> {
        &self.items[self.definer[&(space, index)]]
    }

    fn module_bytes(&self, module: u32) -> &'a [u8] {
        match self.item(Space::Module, module) {
            Item::Module(range) => &self.bytes[range.clone()],
            _ => unreachable!("the module space holds modules only"),
        }
    }

    fn instance_args(&self, instance: u32) -> HashMap<&'a str, u32> {
        match self.item(Space::Instance, instance) {
            Item::CoreInstance(Instance::Instantiate { args, .. }) => {
                args.iter().map(|arg| (arg.name, arg.index)).collect()
            }
            _ => HashMap::new(),
        }
    }

    fn resolve_members(&self) -> Result<Vec<Member<'_>>, LinkError> {
        let mut members = Vec::new();
        for (member, &module) in self.member_modules.iter().enumerate() {
            let bytes = self.module_bytes(module);
            let info = &self.infos[member];
            if info.has_start {
                return Err(LinkError::Unsupported(
                    "a shared-memory module with a start function".to_string(),
                ));
            }
            let args = self.instance_args(self.members[member]);
            let import_targets = info
                .imports
                .iter()
                .map(|import| {
                    let instance = *args.get(import.module).ok_or_else(|| {
                        LinkError::Unsupported(format!("an unsatisfied import {}", import.module))
                    })?;
                    let space = module_info::space_of_import(&import.ty);
                    self.resolve_export(instance, import.name, space, 0)
                })
                .collect::<Result<_, _>>()?;
            members.push(Member {
                bytes,
                info,
                import_targets,
            });
        }
        Ok(members)
    }

    /// Follows `name` exported by core instance `instance` to where it is defined.
    fn resolve_export(
        &self,
        instance: u32,
        name: &str,
        space: Space,
        depth: u32,
    ) -> Result<Target, LinkError> {
        // Every step goes to an earlier definition, so this bounds a malformed cycle only.
        if depth > 64 {
            return Err(LinkError::Unsupported(
                "an import chain deeper than 64".into(),
            ));
        }
        let missing = || LinkError::Unsupported(format!("an import of a missing export {name}"));
        if let Some(&member) = self.member_of_instance.get(&instance) {
            let info = &self.infos[member];
            let &(export_space, index) = info.exports.get(name).ok_or_else(missing)?;
            if export_space != space {
                return Err(missing());
            }
            let imported = info.imports_of[space.slot()].get(index as usize);
            return match imported {
                None => Ok(Target::Defined {
                    member,
                    space,
                    index,
                }),
                Some(&position) => {
                    let import = &info.imports[position];
                    let args = self.instance_args(instance);
                    let from = *args.get(import.module).ok_or_else(missing)?;
                    self.resolve_export(from, import.name, space, depth + 1)
                }
            };
        }
        match self.item(Space::Instance, instance) {
            Item::CoreInstance(Instance::FromExports(exports)) => {
                let export = exports
                    .iter()
                    .find(|e| e.name == name)
                    .ok_or_else(missing)?;
                self.resolve_item(Space::of_core(export.kind), export.index, depth + 1)
            }
            _ => Err(LinkError::Unsupported(
                "an import from a module that is not linked".to_string(),
            )),
        }
    }

    /// Follows a component-level core item to its definition, through aliases.
    fn resolve_item(&self, space: Space, index: u32, depth: u32) -> Result<Target, LinkError> {
        if let Item::Alias(ComponentAlias::CoreInstanceExport {
            instance_index,
            name,
            ..
        }) = self.item(space, index)
        {
            let from_linked_instance = self.member_of_instance.contains_key(instance_index)
                || matches!(
                    self.item(Space::Instance, *instance_index),
                    Item::CoreInstance(Instance::FromExports(_))
                );
            if from_linked_instance {
                return self.resolve_export(*instance_index, name, space, depth + 1);
            }
        }
        Ok(Target::External { space, index })
    }

    /// Decides the new order: which items move after the merged instance and which die.
    fn plan(&self, members: &[Member<'a>]) -> Result<Plan, LinkError> {
        let member_positions: HashSet<usize> = self
            .members
            .iter()
            .map(|&instance| self.definer[&(Space::Instance, instance)])
            .collect();
        let last_member = *member_positions.iter().max().unwrap_or(&0);
        let first_member_module = self.definer[&(Space::Module, self.member_modules[0])];
        let member_module_positions: HashSet<usize> = self
            .member_modules
            .iter()
            .map(|&module| self.definer[&(Space::Module, module)])
            .collect();

        // Items before the last member that use a member (directly or not) must follow
        // the merged instance.
        let references: Vec<Vec<(Space, u32)>> = self
            .items
            .iter()
            .map(|item| renumber::references(item, self.bytes))
            .collect();
        let mut uses_members = vec![false; self.items.len()];
        let mut before = Vec::new();
        let mut deferred = Vec::new();
        for position in 0..last_member {
            if member_positions.contains(&position) {
                uses_members[position] = true;
                continue;
            }
            if member_module_positions.contains(&position) {
                if position == first_member_module {
                    before.push(Step::MergedModule);
                }
                continue;
            }
            uses_members[position] = references[position]
                .iter()
                .any(|key| self.definer.get(key).is_some_and(|&p| uses_members[p]));
            if uses_members[position] {
                if self.items[position].defines().is_none() {
                    return Err(LinkError::Unsupported(
                        "a component-level definition made from a linked module".to_string(),
                    ));
                }
                deferred.push(Step::Item(position));
            } else {
                before.push(Step::Item(position));
            }
        }
        for member in members {
            for target in &member.import_targets {
                if let Target::External { space, index } = target
                    && uses_members[self.definer[&(*space, *index)]]
                {
                    return Err(LinkError::Unsupported(
                        "a linked module importing what is made from a linked module".to_string(),
                    ));
                }
            }
        }
        let mut order = before;
        order.push(Step::ImportBag);
        order.push(Step::MergedInstance);
        order.extend(deferred);
        order.extend((last_member + 1..self.items.len()).map(Step::Item));
        let (live, repointed) = self.liveness(&order, members, &references)?;
        Ok(Plan {
            order,
            live,
            repointed,
        })
    }

    /// Which steps survive: aliases, bags and canonical functions nothing uses any more
    /// are dropped. Aliases of a former module's export that survive are re-pointed at the
    /// merged instance; their targets are returned by item position.
    fn liveness(
        &self,
        order: &[Step],
        members: &[Member<'a>],
        references: &[Vec<(Space, u32)>],
    ) -> Result<(Vec<bool>, HashMap<usize, Target>), LinkError> {
        let mut used: HashSet<(Space, u32)> = HashSet::new();
        let mut live = vec![false; order.len()];
        let mut repointed = HashMap::new();
        // Every reference points at an earlier step, so one backward pass settles it.
        for (step, slot) in order.iter().zip(live.iter_mut()).rev() {
            match step {
                Step::MergedModule | Step::MergedInstance => *slot = true,
                Step::ImportBag => {
                    *slot = true;
                    for target in members.iter().flat_map(|m| &m.import_targets) {
                        if let Target::External { space, index } = target {
                            used.insert((*space, *index));
                        }
                    }
                }
                Step::Item(position) => {
                    let item = &self.items[*position];
                    let removable = matches!(
                        item,
                        Item::Alias(ComponentAlias::CoreInstanceExport { .. })
                            | Item::CoreInstance(Instance::FromExports(_))
                            | Item::Canon(_)
                    ) && item.defines().is_some();
                    let key = item
                        .defines()
                        .map(|space| (space, self.old_index(*position)));
                    *slot = !removable || key.is_some_and(|key| used.contains(&key));
                    if !*slot {
                        continue;
                    }
                    if let Item::Alias(ComponentAlias::CoreInstanceExport {
                        instance_index,
                        name,
                        kind,
                    }) = item
                        && self.member_of_instance.contains_key(instance_index)
                    {
                        let space = Space::of_core(*kind);
                        let target = self.resolve_export(*instance_index, name, space, 0)?;
                        repointed.insert(*position, target);
                        continue;
                    }
                    used.extend(references[*position].iter().copied());
                }
            }
        }
        Ok((live, repointed))
    }

    fn old_index(&self, position: usize) -> u32 {
        self.old_indices[position]
    }
}

/// One step of the new component.
#[derive(Clone, Copy, Debug)]
enum Step {
    Item(usize),
    MergedModule,
    /// The core instance bag that hands the merged module its imports.
    ImportBag,
    MergedInstance,
}

struct Plan {
    order: Vec<Step>,
    live: Vec<bool>,
    /// Aliases of a former module's export, by item position, with what they now name.
    repointed: HashMap<usize, Target>,
}

impl Plan {
    fn exports(&self, layout: &Layout) -> Vec<(String, Space, u32)> {
        let mut exports: Vec<(String, Space, u32)> = self
            .repointed
            .values()
            .map(|&target| {
                let index = layout.index_of(target);
                (layout.export_name(target), target.space(), index)
            })
            .collect();
        exports.sort();
        exports.dedup();
        exports
    }

    fn emit(
        &self,
        graph: &Graph<'_>,
        layout: &Layout,
        merged: &[u8],
    ) -> Result<Vec<u8>, LinkError> {
        // New numbers for the surviving definitions, in their new order.
        let mut maps: [HashMap<u32, u32>; SPACES] = Default::default();
        let mut next = [0u32; SPACES];
        let fresh = |space: Space, next: &mut [u32; SPACES]| {
            next[space.slot()] += 1;
            next[space.slot()] - 1
        };
        let (mut merged_module, mut bag, mut merged_instance) = (0, 0, 0);
        for (step, live) in self.order.iter().zip(&self.live) {
            if !live {
                continue;
            }
            match step {
                Step::MergedModule => merged_module = fresh(Space::Module, &mut next),
                Step::ImportBag => bag = fresh(Space::Instance, &mut next),
                Step::MergedInstance => merged_instance = fresh(Space::Instance, &mut next),
                Step::Item(position) => {
                    if let Some(space) = graph.items[*position].defines() {
                        let old = graph.old_index(*position);
                        let new = fresh(space, &mut next);
                        maps[space.slot()].insert(old, new);
                    }
                }
            }
        }

        let mut renumber = Renumber::mapping(maps);
        let mut sections = Sections::new();
        let import_names: Vec<Vec<String>> = layout
            .externals()
            .iter()
            .zip(Space::ALL)
            .map(|(externals, space)| {
                (0..externals.len())
                    .map(|position| merge::import_name(space, position))
                    .collect()
            })
            .collect();
        let export_names: HashMap<usize, String> = self
            .repointed
            .iter()
            .map(|(position, target)| (*position, layout.export_name(*target)))
            .collect();
        for (step, live) in self.order.iter().zip(&self.live) {
            if !live {
                continue;
            }
            match step {
                Step::MergedModule => {
                    sections.raw(wasm_encoder::ComponentSectionId::CoreModule as u8, merged)
                }
                Step::ImportBag => {
                    let mut exports = Vec::new();
                    for (slot, externals) in layout.externals().iter().enumerate() {
                        for (position, target) in externals.iter().enumerate() {
                            let Target::External { space, index } = *target else {
                                unreachable!("only external targets are imported")
                            };
                            let new = renumber.renumbered(space, index).ok_or_else(|| {
                                LinkError::Unsupported(format!("an import of dropped {space:?}"))
                            })?;
                            exports.push((
                                import_names[slot][position].as_str(),
                                merge::export_kind(space),
                                new,
                            ));
                        }
                    }
                    sections.core_instances().export_items(exports);
                }
                Step::MergedInstance => {
                    sections
                        .core_instances()
                        .instantiate(merged_module, [("", ModuleArg::Instance(bag))]);
                }
                Step::Item(position) if export_names.contains_key(position) => {
                    let Item::Alias(ComponentAlias::CoreInstanceExport { kind, .. }) =
                        graph.items[*position]
                    else {
                        unreachable!("only core aliases are repointed")
                    };
                    sections.aliases().alias(Alias::CoreInstanceExport {
                        instance: merged_instance,
                        kind: kind.into(),
                        name: &export_names[position],
                    });
                }
                Step::Item(position) => {
                    sections
                        .item(&graph.items[*position], graph.bytes, &mut renumber)
                        .map_err(|e| LinkError::Reencode(e.to_string()))?;
                    if let Some((space, old)) = renumber.take_missing() {
                        return Err(LinkError::Unsupported(format!(
                            "a use of linked {space:?} {old} outside the linked modules"
                        )));
                    }
                }
            }
        }
        sections.flush();
        Ok(sections.component.finish())
    }
}
