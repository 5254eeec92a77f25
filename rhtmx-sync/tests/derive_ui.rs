//! The compile errors of `#[derive(Syncable)]`: one file per diagnostic in `tests/ui`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
