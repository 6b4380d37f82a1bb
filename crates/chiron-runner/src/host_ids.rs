//! The host ids of local sandboxes. Each principal's sandbox maps its root and its uid 1000
//! to a pair of unprivileged host ids that belong to that principal alone: the kernel counts
//! per-user limits (processes under the rlimit fallback, inotify instances, namespaces) by
//! host id, so two principals sharing a pair would share those limits.
//!
//! The assignment is kept where it matters, in the owner of the principal's home
//! (`<data_dir>/homes/<principal>`, owned by the pair's second id): it survives restarts and
//! upgrades without a table of its own. A new principal gets the pair its id points to, or
//! the next free one.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

use chiron_core::PrincipalId;

/// The first host id handed out.
const FIRST: u32 = 200_000;
/// How many pairs there are (host ids `FIRST` to `FIRST + 2 * PAIRS - 1`).
const PAIRS: u32 = 100_000;

/// Which pair each principal has, and which pairs are taken.
pub(crate) struct HostIds {
    assigned: Mutex<Assigned>,
}

#[derive(Default)]
struct Assigned {
    by_principal: HashMap<PrincipalId, u32>,
    taken: HashSet<u32>,
}

impl Assigned {
    /// A free pair, starting from the one `principal`'s id points to.
    fn free_pair(&self, principal: PrincipalId) -> u32 {
        let preferred = (principal.0.as_u128() % u128::from(PAIRS)) as u32;
        (0..PAIRS)
            .map(|step| (preferred + step) % PAIRS)
            .find(|pair| !self.taken.contains(pair))
            .expect("invariant: fewer principals on one host than host id pairs")
    }

    fn assign(&mut self, principal: PrincipalId, pair: u32) {
        self.taken.insert(pair);
        self.by_principal.insert(principal, pair);
    }
}

/// The first host id of `pair` (the sandbox's root; its uid 1000 is the next one).
fn base(pair: u32) -> u32 {
    FIRST + 2 * pair
}

/// The pair whose second id is `uid`, if any.
fn pair_of_owner(uid: u32) -> Option<u32> {
    let offset = uid.checked_sub(FIRST + 1)?;
    (offset % 2 == 0 && offset / 2 < PAIRS).then_some(offset / 2)
}

impl HostIds {
    /// Reads the pairs of the homes under `homes`. A home whose owner is not a pair, or whose
    /// pair another home already has (homes made before pairs were unique), gets a free
    /// pair, and everything in it owned by its old ids is handed to the new ones.
    pub(crate) fn load(homes: &Path) -> Self {
        let mut assigned = Assigned::default();
        let mut moved = Vec::new();
        let mut entries: Vec<_> = std::fs::read_dir(homes)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .collect();
        // Oldest first (principal ids are time-ordered): an earlier home keeps a shared pair.
        entries.sort_by_key(|entry| entry.file_name());
        for entry in entries {
            let Some(principal) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if !meta.is_dir() {
                continue;
            }
            match pair_of_owner(meta.uid()) {
                Some(pair) if !assigned.taken.contains(&pair) => assigned.assign(principal, pair),
                _ => moved.push((principal, entry.path(), meta.uid())),
            }
        }
        for (principal, home, owner) in moved {
            let pair = assigned.free_pair(principal);
            assigned.assign(principal, pair);
            // Only what the shared pair owns moves; a home owned by anything else keeps its
            // contents as they are (starting the runner hands over the home itself).
            let Some(old) = pair_of_owner(owner) else {
                continue;
            };
            let ids = HashMap::from([(base(old), base(pair)), (owner, base(pair) + 1)]);
            match hand_over(&home, &ids) {
                Ok(()) => tracing::info!(
                    principal_id = %principal,
                    host_id = base(pair) + 1,
                    "home moved to host ids of its own"
                ),
                Err(err) => tracing::warn!(
                    principal_id = %principal,
                    error = %err,
                    "could not hand a home to its new host ids"
                ),
            }
        }
        Self {
            assigned: Mutex::new(assigned),
        }
    }

    /// The first of `principal`'s two host ids (its sandbox's root; uid 1000 maps to the
    /// next), assigning a free pair on first use.
    pub(crate) fn base(&self, principal: PrincipalId) -> u32 {
        let mut assigned = self
            .assigned
            .lock()
            .expect("invariant: the host id lock is never poisoned");
        if let Some(pair) = assigned.by_principal.get(&principal) {
            return base(*pair);
        }
        let pair = assigned.free_pair(principal);
        assigned.assign(principal, pair);
        base(pair)
    }
}

/// Changes the owner and group of everything under `dir` (itself included) by `ids` (old id
/// → new id), leaving other owners alone. Symbolic links are changed themselves and never
/// followed, so a link in a home cannot hand the host's files to a sandbox.
fn hand_over(dir: &Path, ids: &HashMap<u32, u32>) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    let uid = ids.get(&meta.uid()).copied();
    let gid = ids.get(&meta.gid()).copied();
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::lchown(dir, uid, gid)?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            hand_over(&entry?.path(), ids)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{chown, lchown, symlink};

    use super::*;

    fn principal(n: u128) -> PrincipalId {
        PrincipalId(uuid::Uuid::from_u128(n))
    }

    fn owner(path: &Path) -> (u32, u32) {
        let meta = std::fs::symlink_metadata(path).unwrap();
        (meta.uid(), meta.gid())
    }

    #[test]
    fn principals_whose_ids_point_to_one_pair_get_two() {
        let dir = tempfile::tempdir().unwrap();
        let ids = HostIds::load(dir.path());
        // Both ids point to the same pair.
        let (a, b) = (principal(7), principal(7 + u128::from(PAIRS)));
        assert_eq!(ids.base(a), base(7));
        assert_eq!(ids.base(b), base(8));
        assert_eq!(ids.base(a), base(7), "a principal keeps its pair");
        assert_eq!(pair_of_owner(base(8) + 1), Some(8));
        assert_eq!(pair_of_owner(base(8)), None);
        assert_eq!(pair_of_owner(FIRST + 2 * PAIRS + 1), None);
    }

    /// Needs root (chown), as the local sandboxes do.
    #[test]
    fn homes_keep_their_pairs_and_a_shared_pair_is_split() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let homes = tempfile::tempdir().unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        let make = |who: PrincipalId, pair: u32| {
            let home = homes.path().join(who.to_string());
            std::fs::create_dir_all(home.join("sub")).unwrap();
            std::fs::write(home.join("sub/file"), "x").unwrap();
            symlink(outside.path(), home.join("link")).unwrap();
            for path in [home.join("sub/file"), home.join("sub"), home.clone()] {
                chown(&path, Some(base(pair) + 1), Some(base(pair) + 1)).unwrap();
            }
            lchown(
                home.join("link"),
                Some(base(pair) + 1),
                Some(base(pair) + 1),
            )
            .unwrap();
            home
        };
        // Made before pairs were unique: the first two share pair 5.
        let (first, second, third) = (principal(1), principal(2), principal(3));
        make(first, 5);
        let moved = make(second, 5);
        make(third, 9);
        let ids = HostIds::load(homes.path());
        assert_eq!(ids.base(first), base(5));
        assert_eq!(ids.base(third), base(9));
        let new = ids.base(second);
        assert!(new != base(5) && new != base(9), "{new}");
        for path in ["", "sub", "sub/file", "link"] {
            assert_eq!(owner(&moved.join(path)), (new + 1, new + 1), "{path}");
        }
        assert_eq!(owner(outside.path()), (0, 0), "a link is never followed");
        // A reload reads the same pairs back.
        let again = HostIds::load(homes.path());
        for who in [first, second, third] {
            assert_eq!(again.base(who), ids.base(who));
        }
    }
}
