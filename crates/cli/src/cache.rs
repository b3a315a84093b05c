//! `qemu-machine cache`: the snapshot cache of `run --exec --warm` (the library's
//! [`SnapshotCache`]): list, clean, evict.

use std::time::SystemTime;

use qemu_machine::snapshot_cache::SnapshotCache;
use serde_json::json;

use crate::args::{CacheAction, CacheArgs};
use crate::failure::{Failure, Outcome};
use crate::output::print_json;

/// The cache `--dir` names, else the library's default one.
pub(crate) fn open(dir: Option<&std::path::Path>) -> Result<SnapshotCache, Failure> {
    match dir {
        Some(dir) => Ok(SnapshotCache::new(dir)),
        None => Ok(SnapshotCache::from_env()?),
    }
}

/// Runs `qemu-machine cache ...`.
pub(crate) fn cache(args: CacheArgs) -> Outcome {
    let cache = open(args.dir.as_deref())?;
    match args.action {
        CacheAction::List => {
            let entries = cache.list()?;
            if args.json {
                let list: Vec<_> = entries
                    .iter()
                    .map(|e| {
                        json!({
                            "key": e.key,
                            "path": e.path,
                            "bytes": e.bytes,
                            "last_used": unix_seconds(e.last_used),
                            "qemu_version": e.info.as_ref().map(|i| i.qemu_version.clone()),
                        })
                    })
                    .collect();
                print_json(&json!({"dir": cache.dir(), "entries": list}), false);
            } else {
                println!("{} ({} entries)", cache.dir().display(), entries.len());
                for e in &entries {
                    let age = SystemTime::now()
                        .duration_since(e.last_used)
                        .map_or(0, |d| d.as_secs());
                    println!(
                        "{}  {:>8.1} MiB  used {age} s ago  QEMU {}",
                        e.key,
                        e.bytes as f64 / (1u64 << 20) as f64,
                        e.info.as_ref().map_or("?", |i| i.qemu_version.as_str())
                    );
                }
            }
        }
        CacheAction::Clean => {
            let removed = cache.clean()?;
            report(args.json, "removed", removed, &cache);
        }
        CacheAction::Evict { max_mib } => {
            let max = max_mib.map_or_else(qemu_machine::snapshot_cache::max_bytes_from_env, |m| {
                m.saturating_mul(1 << 20)
            });
            let removed = cache.max_bytes(max).evict()?;
            report(args.json, "evicted", removed, &open(args.dir.as_deref())?);
        }
    }
    Ok(0)
}

fn report(json: bool, what: &str, count: usize, cache: &SnapshotCache) {
    if json {
        print_json(&json!({what: count, "dir": cache.dir()}), false);
    } else {
        println!("{what} {count} entries from {}", cache.dir().display());
    }
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
