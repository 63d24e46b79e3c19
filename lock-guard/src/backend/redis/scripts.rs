//! The Lua scripts that take, release and renew a lock (`lock-guard/src/scripts/*.lua`), and the
//! commands that call them.

use redis::{Cmd, Script};

/// A script's `EVALSHA` hash (from [`redis::Script`]) and its source.
///
/// `redis::Script::invoke_async` answers `NOSCRIPT` with `SCRIPT LOAD` and a second `EVALSHA`
/// (two more round trips); keeping the source lets a `NOSCRIPT` be answered with one `EVAL`, which
/// runs the script and fills the cache at once.
pub(crate) struct Lua {
    script: Script,
    source: &'static str,
}

impl Lua {
    pub(crate) fn new(source: &'static str) -> Self {
        Lua {
            script: Script::new(source),
            source,
        }
    }

    /// `EVALSHA` (or, with `eval`, `EVAL`) of this script with `keys` and `args`.
    pub(crate) fn command(&self, eval: bool, keys: &[&str], args: &[&[u8]]) -> Cmd {
        let size = keys.iter().map(|k| k.len()).sum::<usize>()
            + args.iter().map(|a| a.len()).sum::<usize>()
            + 48
            + if eval { self.source.len() } else { 0 };
        let mut cmd = Cmd::with_capacity(3 + keys.len() + args.len(), size);
        if eval {
            cmd.arg("EVAL").arg(self.source);
        } else {
            cmd.arg("EVALSHA").arg(self.script.get_hash());
        }
        cmd.arg(keys.len());
        for k in keys {
            cmd.arg(*k);
        }
        for a in args {
            cmd.arg(*a);
        }
        cmd
    }
}

/// The scripts: acquire, release, renew, and the fencing counter's write-back.
pub(crate) struct Scripts {
    pub(crate) acquire: Lua,
    pub(crate) release: Lua,
    pub(crate) renew: Lua,
    pub(crate) raise_fence: Lua,
}

pub(crate) fn scripts() -> &'static Scripts {
    static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        acquire: Lua::new(include_str!("../../scripts/acquire.lua")),
        release: Lua::new(include_str!("../../scripts/release.lua")),
        renew: Lua::new(include_str!("../../scripts/renew.lua")),
        raise_fence: Lua::new(include_str!("../../scripts/raise_fence.lua")),
    })
}
