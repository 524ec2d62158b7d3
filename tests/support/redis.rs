//! Placeholder: replaced by the redis-server harness when the Redis engine lands.
#![allow(dead_code)]
pub struct RedisServer;
impl RedisServer {
    pub fn start() -> Self {
        panic!("Redis engine not merged yet")
    }
    pub fn url(&self) -> String {
        String::new()
    }
}
