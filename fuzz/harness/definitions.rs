//! `definitions`: loading a definitions document from a file (`Definitions::load`, the JSON
//! parse `--load-definitions` and the data directory use) and importing it into an in-memory
//! broker (`Broker::import_definitions`). Errors are fine; panics are not. A document that
//! imported once imports again: `--load-definitions` re-imports the same file at every start.
//!
//! Input: the file's bytes.

use ferrymq_core::{Broker, BrokerConfig};
use ferrymq_store::definitions::Definitions;

/// Loads and imports one document.
pub fn definitions(data: &[u8]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("definitions.json");
    std::fs::write(&path, data).expect("write the definitions file");
    let Ok(Some(defs)) = Definitions::load(&path) else {
        return;
    };
    let broker = Broker::new(BrokerConfig::default());
    if broker.import_definitions(&defs).is_ok() {
        if let Err(e) = broker.import_definitions(&defs) {
            panic!("a document that imported once is refused the second time: {e}");
        }
    }
}
