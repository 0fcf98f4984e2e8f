//! Fuzz test of the runtime's boundary with the components it is given: whatever bytes an image
//! holds are compiled, linked against the host's imports and sorted into app or handler, or
//! refused with an error, never a panic. wasmtime fuzzes its own compiler; this checks what
//! Wedge does around it. See `wedge_testkit_fuzz` for how it runs.

use std::panic::AssertUnwindSafe;

use wasmtime::component::Component;
use wedge_testkit_fuzz::Mutation;

use super::{component_kind, linker};
use crate::engine::{EngineSettings, build_engine};

/// An app (exports `wasi:cli/run`) and a handler-shaped component that imports a host function.
const COMPONENTS: &[&str] = &[
    r#"(component
        (core module $m (func (export "run") (result i32) i32.const 0))
        (core instance $i (instantiate $m))
        (func $run (result (result)) (canon lift (core func $i "run")))
        (instance $run-instance (export "run" (func $run)))
        (export "wasi:cli/run@0.2.0" (instance $run-instance)))"#,
    r#"(component
        (import "wasi:cli/environment@0.2.0" (instance $env
            (export "initial-cwd" (func (result (option string))))))
        (core module $m
            (memory (export "memory") 1)
            (func (export "run") (result i32) i32.const 1))
        (core instance $i (instantiate $m))
        (func $run (result (result)) (canon lift (core func $i "run")))
        (instance $run-instance (export "run" (func $run)))
        (export "wasi:cli/run@0.2.0" (instance $run-instance)))"#,
];

#[test]
fn components_compile_link_and_sort_or_are_refused() {
    let Ok(engine) = build_engine(&EngineSettings::default()) else {
        panic!("the default engine builds");
    };
    let Ok(linker) = linker(&engine) else {
        panic!("the host's linker builds");
    };
    let seeds: Vec<Vec<u8>> = COMPONENTS
        .iter()
        .filter_map(|w| wat::parse_str(w).ok())
        .collect();
    assert_eq!(
        seeds.len(),
        COMPONENTS.len(),
        "the seed components are valid"
    );
    for seed in &seeds {
        let component = Component::new(&engine, seed).ok();
        assert!(component.is_some_and(|c| component_kind(&engine, &c).is_some()));
    }
    let seeds: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
    // A panic would fail the test, not leave the engine or linker half-changed for the next input.
    let (engine, linker) = (AssertUnwindSafe(engine), AssertUnwindSafe(linker));
    bolero::check!().with_type::<Mutation>().for_each(|m| {
        if let Ok(component) = Component::new(&engine, m.apply(&seeds)) {
            let _ = linker.instantiate_pre(&component);
            let _ = component_kind(&engine, &component);
        }
    });
}
