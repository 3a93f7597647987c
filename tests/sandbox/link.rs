//! The linker (`celeriac::link`): modules sharing a memory merge into one that defines the
//! table and fills it from constant offsets, and the component computes what it did before.

use wasmparser::{ElementKind, Operator, Parser, Payload};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, Store};

use crate::support::celeriac_cli::workspace;

/// Built like componentize-py's output: `main` defines the memory, the table and each
/// library's `__table_base`; `lib` writes its function into the imported table at that base,
/// reads a mutable global of `main` (a `GOT.mem` entry) and calls a lowered host function.
/// `run` returns 40 (the global) + 2 (through the table) + 7 (through memory) + 1 (host).
const DYNAMICALLY_LINKED: &str = r#"
(component
  (import "host-inc" (func $host_inc (param "x" u32) (result u32)))
  (core module $main
    (memory (export "memory") 1)
    (table (export "__indirect_function_table") 4 funcref)
    (global (export "lib:table_base") i32 (i32.const 2))
    (global (export "counter") (mut i32) (i32.const 40)))
  (core module $lib
    (import "env" "memory" (memory 1))
    (import "env" "__indirect_function_table" (table 4 funcref))
    (import "env" "__table_base" (global $base i32))
    (import "GOT.mem" "counter" (global $counter (mut i32)))
    (import "host" "inc" (func $inc (param i32) (result i32)))
    (type $answer (func (result i32)))
    (func $two (result i32) (i32.add (global.get $counter) (i32.const 2)))
    (elem (global.get $base) func $two)
    (func (export "run") (result i32)
      (i32.store (i32.const 16) (i32.const 7))
      (call $inc
        (i32.add
          (call_indirect (type $answer) (global.get $base))
          (i32.load (i32.const 16))))))
  (core instance $m (instantiate $main))
  (alias core export $m "memory" (core memory $memory))
  (alias core export $m "__indirect_function_table" (core table $table))
  (alias core export $m "lib:table_base" (core global $table_base))
  (alias core export $m "counter" (core global $counter))
  (core func $inc (canon lower (func $host_inc)))
  (core instance $env
    (export "memory" (memory $memory))
    (export "__indirect_function_table" (table $table))
    (export "__table_base" (global $table_base)))
  (core instance $got (export "counter" (global $counter)))
  (core instance $host (export "inc" (func $inc)))
  (core instance $l (instantiate $lib
    (with "env" (instance $env))
    (with "GOT.mem" (instance $got))
    (with "host" (instance $host))))
  (func (export "run") (result u32) (canon lift (core func $l "run") (memory $memory)))
)
"#;

fn run(component: &[u8]) -> u32 {
    let engine = Engine::new(Config::new().wasm_component_model(true)).expect("engine");
    let component = Component::new(&engine, component).expect("component compiles");
    let mut linker = Linker::<()>::new(&engine);
    linker
        .root()
        .func_wrap("host-inc", |_, (x,): (u32,)| Ok((x + 1,)))
        .expect("host function");
    let mut store = Store::new(&engine, ());
    let instance = linker
        .instantiate(&mut store, &component)
        .expect("instantiates");
    let run = instance
        .get_typed_func::<(), (u32,)>(&mut store, "run")
        .expect("exports run");
    run.call(&mut store, ()).expect("runs").0
}

/// Per core module of `component`: whether it uses a memory, and whether each of its
/// element segments fills a table it defines from a constant offset.
fn modules(component: &[u8]) -> Vec<(bool, Vec<bool>)> {
    let mut modules = Vec::new();
    for payload in Parser::new(0).parse_all(component) {
        let Payload::ModuleSection {
            unchecked_range, ..
        } = payload.expect("parses")
        else {
            continue;
        };
        let (mut uses_memory, mut imported_tables, mut segments) = (false, 0, Vec::new());
        for payload in Parser::new(0).parse_all(&component[unchecked_range]) {
            match payload.expect("parses") {
                Payload::ImportSection(section) => {
                    for import in section.into_imports() {
                        match import.expect("import").ty {
                            wasmparser::TypeRef::Memory(_) => uses_memory = true,
                            wasmparser::TypeRef::Table(_) => imported_tables += 1,
                            _ => {}
                        }
                    }
                }
                Payload::MemorySection(section) => uses_memory |= section.count() > 0,
                Payload::ElementSection(section) => {
                    for element in section {
                        let ElementKind::Active {
                            table_index,
                            offset_expr,
                        } = element.expect("element").kind
                        else {
                            continue;
                        };
                        let constant = matches!(
                            offset_expr.get_operators_reader().read(),
                            Ok(Operator::I32Const { .. })
                        );
                        segments.push(constant && table_index.unwrap_or(0) >= imported_tables);
                    }
                }
                _ => {}
            }
        }
        modules.push((uses_memory, segments));
    }
    modules
}

#[test]
fn modules_sharing_a_memory_merge_and_compute_the_same() {
    let original = wat::parse_str(DYNAMICALLY_LINKED).expect("valid WAT");
    assert_eq!(run(&original), 50);

    let linked = celeriac::link::link(&original)
        .expect("links")
        .expect("two modules share the memory");
    assert_eq!(linked.modules, 2);
    let linked = linked.component;
    wasmparser::Validator::new()
        .validate_all(&linked)
        .expect("the linked component is valid");
    assert_eq!(
        modules(&linked),
        vec![(true, vec![true])],
        "one module, its segment at a constant offset into its own table"
    );
    assert_eq!(run(&linked), 50);
}

#[test]
fn a_component_with_one_module_is_left_alone() {
    let single = wat::parse_str(
        r#"(component
             (core module $m (memory (export "memory") 1) (func (export "f") (result i32) i32.const 1))
             (core instance $i (instantiate $m))
             (func (export "f") (result u32) (canon lift (core func $i "f"))))"#,
    )
    .expect("valid WAT");
    assert!(celeriac::link::link(&single).expect("reads").is_none());
}

/// The Python example as componentize-py builds it links: CPython's libraries, the WASI
/// adapter and the init module end up in one module whose table is filled only from
/// constant offsets into itself (the Python tests elsewhere run tasks through the sandbox,
/// which compiles this form).
#[test]
fn the_python_example_links() {
    let component = std::fs::read(workspace().join("target/wasm-tasks/tasks.wasm"))
        .expect("scripts/build-examples.sh built tasks.wasm");
    assert!(
        modules(&component).len() > 10,
        "componentize-py's separate modules"
    );
    let linked = celeriac::link::link(&component)
        .expect("links")
        .expect("the libraries share the memory");
    assert_eq!(linked.modules, 11);
    wasmparser::Validator::new()
        .validate_all(&linked.component)
        .expect("the linked component is valid");
    let sharing_memory: Vec<_> = modules(&linked.component)
        .into_iter()
        .filter(|(uses_memory, _)| *uses_memory)
        .collect();
    assert_eq!(sharing_memory.len(), 1, "one module holds the memory");
    let segments = &sharing_memory[0].1;
    assert!(segments.len() > 5, "the libraries' segments: {segments:?}");
    assert!(
        segments.iter().all(|lazy| *lazy),
        "every segment is constant and into the module's own table: {segments:?}"
    );
    // The SDK lists ~30,000 objects alive at build time; a few die before the snapshot.
    assert!(
        linked.immortal_objects > 20_000,
        "snapshot objects made immortal: {}",
        linked.immortal_objects
    );
}

/// A table as the Python SDK leaves it (`celeriac_sdk/immortal.py`): the marker, version 1,
/// the entry count, the wrapping sum of the entry words, then (address, type) pairs.
fn immortal_table(entries: &[(u32, u32)], checksum_offset: u32) -> Vec<u8> {
    let words: Vec<u32> = entries.iter().flat_map(|&(a, t)| [a, t]).collect();
    let sum = words
        .iter()
        .fold(checksum_offset, |sum, w| sum.wrapping_add(*w));
    let mut table = b"celeriac\x00immortal".to_vec();
    for word in [1, entries.len() as u32, sum].into_iter().chain(words) {
        table.extend(word.to_le_bytes());
    }
    table
}

/// WAT's string form of `bytes`.
fn wat_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:02x}")).collect()
}

/// `main`'s image holds four object headers (reference count, type) at 0x10100..0x10120
/// (above 64 KiB, as CPython's heap is) and a table listing them; `lib` reads memory.
fn with_objects(table: &[u8]) -> Vec<u8> {
    let headers: Vec<u8> = [(3, 0x500), (0, 0x500), (0x10110, 0x500), (1, 0x600)]
        .into_iter()
        .flat_map(|(count, ty): (u32, u32)| [count.to_le_bytes(), ty.to_le_bytes()].concat())
        .collect();
    let text = format!(
        r#"(component
             (core module $main
               (memory (export "memory") 2)
               (data (i32.const 0x10100) "{headers}")
               (data (i32.const 0x400) "{table}"))
             (core module $lib
               (import "env" "memory" (memory 2))
               (func (export "load") (param i32) (result i32) (i32.load (local.get 0))))
             (core instance $m (instantiate $main))
             (core instance $l (instantiate $lib (with "env" (instance $m))))
             (func (export "load") (param "address" u32) (result u32)
               (canon lift (core func $l "load"))))"#,
        headers = wat_string(&headers),
        table = wat_string(table),
    );
    wat::parse_str(text).expect("valid WAT")
}

fn load(component: &[u8], address: u32) -> u32 {
    let engine = Engine::new(Config::new().wasm_component_model(true)).expect("engine");
    let component = Component::new(&engine, component).expect("component compiles");
    let mut store = Store::new(&engine, ());
    let instance = Linker::<()>::new(&engine)
        .instantiate(&mut store, &component)
        .expect("instantiates");
    let load = instance
        .get_typed_func::<(u32,), (u32,)>(&mut store, "load")
        .expect("exports load");
    load.call(&mut store, (address,)).expect("runs").0
}

#[test]
fn listed_objects_with_a_live_header_become_immortal() {
    // Live; freed (count 0, a free-list end); freed (a free-list pointer where the count
    // was); another type's object now at the address.
    let entries = [
        (0x10100, 0x500),
        (0x10108, 0x500),
        (0x10110, 0x500),
        (0x10118, 0x500),
    ];
    let linked = celeriac::link::link(&with_objects(&immortal_table(&entries, 0)))
        .expect("links")
        .expect("two modules share the memory");
    assert_eq!(linked.immortal_objects, 1);
    let counts: Vec<u32> = [0x10100, 0x10108, 0x10110, 0x10118]
        .into_iter()
        .map(|address| load(&linked.component, address))
        .collect();
    assert_eq!(
        counts,
        [5 << 28, 0, 0x10110, 1],
        "CPython 3.14's immortal count, 32-bit"
    );
    assert_eq!(load(&linked.component, 0x10104), 0x500, "the type is kept");
}

#[test]
fn a_table_whose_checksum_does_not_match_changes_nothing() {
    let entries = [(0x10100, 0x500)];
    let linked = celeriac::link::link(&with_objects(&immortal_table(&entries, 1)))
        .expect("links")
        .expect("two modules share the memory");
    assert_eq!(linked.immortal_objects, 0);
    assert_eq!(load(&linked.component, 0x10100), 3);
}

#[test]
fn what_the_linker_cannot_merge_is_refused_not_mangled() {
    assert!(matches!(
        celeriac::link::link(b"\0asm not a component"),
        Err(celeriac::link::LinkError::Parse(_))
    ));
    // One library instantiated twice over the same memory: merging would need two copies.
    let twice = wat::parse_str(
        r#"(component
             (core module $main (memory (export "memory") 1))
             (core module $lib (import "env" "memory" (memory 1)))
             (core instance $m (instantiate $main))
             (core instance $a (instantiate $lib (with "env" (instance $m))))
             (core instance $b (instantiate $lib (with "env" (instance $m)))))"#,
    )
    .expect("valid WAT");
    let refused = celeriac::link::link(&twice).expect_err("refused");
    assert!(
        refused.to_string().contains("instantiated more than once"),
        "{refused}"
    );
}

#[test]
fn an_invalid_component_is_refused_before_linking() {
    // An alias of an instance that does not exist: valid binary, invalid component.
    let dangling = wat::parse_bytes(
        br#"(component
              (core module $main (memory (export "memory") 1))
              (core module $lib (import "env" "memory" (memory 1)))
              (core instance $m (instantiate $main))
              (core instance $l (instantiate $lib (with "env" (instance $m)))))"#,
    )
    .expect("valid WAT");
    let mut broken = dangling.to_vec();
    // Point the second instantiation's argument at instance 7.
    let arg = broken
        .windows(5)
        .rposition(|w| w == b"\x03env\x12")
        .expect("the `with \"env\"` argument");
    broken[arg + 5] = 7;
    assert!(matches!(
        celeriac::link::link(&broken),
        Err(celeriac::link::LinkError::Parse(_))
    ));
}

#[test]
fn modules_with_memories_of_their_own_stay_apart() {
    // Merged, the two memories would exceed the pool's one memory per module.
    let two_memories = wat::parse_str(
        r#"(component
             (core module $a (memory (export "memory") 1))
             (core module $b (memory (export "memory") 1))
             (core instance (instantiate $a))
             (core instance (instantiate $b)))"#,
    )
    .expect("valid WAT");
    let refused = celeriac::link::link(&two_memories).expect_err("refused");
    assert!(refused.to_string().contains("2 memories"), "{refused}");
}
