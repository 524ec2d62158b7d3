//! The Lua scripts of `lua/`, ready to run with `EVALSHA`.
//!
//! Owns: which files make up which script (`lua/lib.lua` is prepended to
//! those that use its helpers, so every loaded script is self-contained).
//! Must not touch: Redis (loading happens in `RedisEngine::connect`).

use redis::Script;

const LIB: &str = include_str!("../../../lua/lib.lua");

/// The loaded scripts; those that use the helpers get `lua/lib.lua` prepended.
pub struct Scripts {
    pub append: Script,
    pub confirm: Script,
    pub ack: Script,
    pub cursor: Script,
    pub create_user: Script,
    pub presence: Script,
    pub zrem_if: Script,
    pub leases: Script,
    pub refresh: Script,
}

impl Scripts {
    pub fn new() -> Self {
        let with_lib = |s: &str| Script::new(&[LIB, s].concat());
        Self {
            append: with_lib(include_str!("../../../lua/append.lua")),
            confirm: with_lib(include_str!("../../../lua/confirm.lua")),
            ack: with_lib(include_str!("../../../lua/ack.lua")),
            cursor: with_lib(include_str!("../../../lua/cursor.lua")),
            create_user: Script::new(include_str!("../../../lua/create_user.lua")),
            presence: with_lib(include_str!("../../../lua/presence.lua")),
            zrem_if: Script::new(include_str!("../../../lua/zrem_if.lua")),
            leases: with_lib(include_str!("../../../lua/leases.lua")),
            refresh: Script::new(include_str!("../../../lua/refresh.lua")),
        }
    }

    pub fn all(&self) -> [&Script; 9] {
        [
            &self.append,
            &self.confirm,
            &self.ack,
            &self.cursor,
            &self.create_user,
            &self.presence,
            &self.zrem_if,
            &self.leases,
            &self.refresh,
        ]
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}
