//! Per-snapshot caches of what request building (`request.rs`) makes
//! for a call and can reuse: tool entries and complete entity stores.
//! Kept in the snapshot (`load.rs`).

use cedar_policy::{Entities, PolicySet};
use mandate_core::ToolClass;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// What a call to one tool needs whoever makes it.
pub(crate) struct ToolEntry {
    /// The `Tool` entity (attributes `class`, `upstream`; parent its
    /// `Upstream`) and the class's action entity with its action groups.
    pub(crate) entities: Entities,
    /// The policy slices that can apply to calls to this tool.
    pub(crate) policies: Arc<[Arc<PolicySet>]>,
}

/// Per-snapshot caches, so that a call repeats no work another call to the
/// same tool by the same principal already did.
///
/// Both maps are bounded. Past [`Caches::TOOLS`] tools, entries are built
/// per call instead (unknown tool names cannot grow memory). Past
/// [`Caches::STORES`] entity stores, the map is emptied and refills.
#[derive(Default)]
pub(crate) struct Caches {
    tools: RwLock<HashMap<(String, ToolClass), Arc<ToolEntry>>>,
    /// Complete stores (tool, actions, user, build), by `request::store_key`. The
    /// key includes the directory's generation, so a replaced directory is
    /// never served from here.
    stores: RwLock<HashMap<String, Arc<Entities>>>,
}

impl Caches {
    const TOOLS: usize = 4096;
    const STORES: usize = 4096;

    pub(crate) fn tool(
        &self,
        tool: &str,
        class: ToolClass,
        build: impl FnOnce() -> Result<ToolEntry, String>,
    ) -> Result<Arc<ToolEntry>, String> {
        // A poisoned lock only means another thread panicked mid-insert;
        // the map itself is still consistent, but bypass it to be safe.
        if let Ok(map) = self.tools.read()
            && let Some(hit) = map.get(&(tool.to_owned(), class))
        {
            return Ok(Arc::clone(hit));
        }
        let built = Arc::new(build()?);
        if let Ok(mut map) = self.tools.write()
            && map.len() < Self::TOOLS
        {
            map.insert((tool.to_owned(), class), Arc::clone(&built));
        }
        Ok(built)
    }

    pub(crate) fn store(
        &self,
        key: String,
        build: impl FnOnce() -> Result<Entities, String>,
    ) -> Result<Arc<Entities>, String> {
        if let Ok(map) = self.stores.read()
            && let Some(hit) = map.get(&key)
        {
            return Ok(Arc::clone(hit));
        }
        let built = Arc::new(build()?);
        if let Ok(mut map) = self.stores.write() {
            if map.len() >= Self::STORES {
                map.clear();
            }
            map.insert(key, Arc::clone(&built));
        }
        Ok(built)
    }
}
