//! The whole hook table loads, passes the verifier and attaches on this kernel: an optional
//! hook that silently fails would quietly turn its reasons into `unknown`.

#[test]
fn every_hook_attaches_on_this_kernel() {
    let t = twtrace::tracer::Tracer::start(&twtrace::tracer::TracerOptions {
        snapshot: false,
        ..Default::default()
    })
    .unwrap();
    let failed: Vec<String> = t
        .hooks
        .iter()
        .filter(|h| h.result.is_err())
        .map(|h| h.report_line())
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert_eq!(t.hooks.len(), twtrace::loader::HOOKS.len());
}
