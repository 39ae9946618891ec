//! Test-only fault hooks (feature `fault-injection`, never in a release
//! build): text that carries `<mark><token>` panics the actor handling it
//! the first time this process sees that token, so integration tests can
//! watch a crashed actor restart and its job be retried.
//!
//! - [`RENDERER`] in a document (its title) panics the renderer;
//! - [`UPLOADER`] in a file name panics the uploader.

/// A fault: the mark that triggers it and the actor it panics. Without the
/// feature nothing reads it: the hooks compile to nothing.
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
pub(crate) struct Fault {
    mark: &'static str,
    actor: &'static str,
}

/// Makes a renderer panic on a document.
pub(crate) const RENDERER: Fault = Fault {
    mark: "fault:panic-once:",
    actor: "renderer",
};
/// Makes the uploader panic on an artifact's file name.
pub(crate) const UPLOADER: Fault = Fault {
    mark: "fault-uploader-panic-once-",
    actor: "uploader",
};

#[cfg(feature = "fault-injection")]
pub(crate) fn maybe_panic(text: &str, fault: Fault) {
    use std::collections::HashSet;

    let Fault { mark, actor } = fault;
    use std::sync::{Mutex, OnceLock};

    let Some(start) = text.find(mark) else {
        return;
    };
    let token: String = text[start + mark.len()..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    static FIRED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let first = FIRED
        .get_or_init(Default::default)
        .lock()
        .map(|mut fired| fired.insert(format!("{mark}{token}")))
        .unwrap_or(false);
    if first {
        panic!("injected {actor} fault {token}");
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn maybe_panic(_text: &str, _fault: Fault) {}
