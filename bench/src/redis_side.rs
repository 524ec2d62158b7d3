//! The broker's Redis side as the ceilings measure it: the append script
//! exactly as the engine loads it, and the engine's number of lanes.
//!
//! Owns: nothing of the product; it reads `lua/` as the engine does
//! (`lua/lib.lua` prepended to the scripts that use its helpers, see
//! `src/engine/redis/scripts.rs` and `docs/redis-layout.md`). Must not touch:
//! any Redis it was not given.

use redis::Script;

/// `lua/append.lua` with `lua/lib.lua` prepended: the engine's append script
/// (same text, so the same SHA1 for `EVALSHA`).
pub fn append_script() -> Script {
    Script::new(
        &[
            include_str!("../../lua/lib.lua"),
            include_str!("../../lua/append.lua"),
        ]
        .concat(),
    )
}

/// The append script with one change, for measuring it only (not the
/// product's layout): a member's sequence number is the one Redis gives the
/// entry id `0-*` (`0-<seq>`), instead of `HINCRBY` on the meta hash and the
/// id `<seq>-0`. Everything else is the same text.
pub fn append_script_auto_id() -> Result<Script, String> {
    const HINCRBY: &str = "  local seq = redis.call('HINCRBY', meta, 'seq', '1')
  local s = int(seq)
  redis.call('XADD', events, 'MAXLEN', '=', max_backlog, s .. '-0', unpack(fields))
";
    const AUTO_ID: &str = "  local s = string.sub(redis.call('XADD', events, 'MAXLEN', '=', max_backlog, '0-*', unpack(fields)), 3)
  local seq = tonumber(s)
";
    let lib = include_str!("../../lua/lib.lua");
    if !lib.contains(HINCRBY) {
        return Err(
            "lua/lib.lua's append_one changed: update redis_side::append_script_auto_id".into(),
        );
    }
    Ok(Script::new(
        &[
            &lib.replace(HINCRBY, AUTO_ID),
            include_str!("../../lua/append.lua"),
        ]
        .concat(),
    ))
}

/// Loads `script` into the Redis at `url` (`SCRIPT LOAD`) and returns its
/// SHA1, for `redis-benchmark ... EVALSHA <sha>`.
pub fn load(url: &str, script: &Script) -> Result<String, String> {
    let mut con = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .map_err(|e| format!("redis at {url}: {e}"))?;
    script
        .prepare_invoke()
        .load(&mut con)
        .map_err(|e| format!("SCRIPT LOAD: {e}"))
}

/// The multiplexed connections the Redis engine keeps for its non-blocking
/// commands ("lanes", docs/benchmarks.md): the pipelined ceiling uses as many.
pub const ENGINE_LANES: usize = 4;

/// Runs `redis-benchmark -q -c clients -P pipeline -n n -r keyspace <cmd…>`
/// against the Redis on `port` and answers its requests per second.
pub fn redis_benchmark(
    port: u16,
    (clients, pipeline): (usize, usize),
    n: u64,
    keyspace: u64,
    cmd: &[String],
) -> Result<f64, String> {
    let out = std::process::Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
        .args(["-P", &pipeline.to_string(), "-c", &clients.to_string()])
        .args(["-n", &n.to_string(), "-r", &keyspace.to_string()])
        .args(cmd)
        .output()
        .map_err(|e| format!("redis-benchmark: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    text.lines()
        .filter_map(|l| l.split(" requests per second").next()?.rsplit(' ').next())
        .filter_map(|v| v.parse::<f64>().ok())
        .next_back()
        .ok_or_else(|| format!("unreadable redis-benchmark output: {text}"))
}
