//! Accounts on Redis: `create_user.lua` (create only if absent) and `HMGET`
//! of `mythos:user:{name}`.
//!
//! Owns: the [`Accounts`] capability. Must not touch: passwords (callers
//! pass the argon2id hash).

use async_trait::async_trait;

use super::{keys, RedisEngine};
use crate::engine::{Account, Accounts, Result};

#[async_trait]
impl Accounts for RedisEngine {
    async fn create_user(&self, username: &str, account: &Account) -> Result<bool> {
        let created: u8 = self
            .scripts
            .create_user
            .key(keys::user(username))
            .arg(&account.password_hash)
            .arg(&account.role)
            .invoke_async(&mut self.shared().await?)
            .await?;
        Ok(created == 1)
    }

    async fn user(&self, username: &str) -> Result<Option<Account>> {
        let (hash, role): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(keys::user(username))
            .arg("password_hash")
            .arg("role")
            .query_async(&mut self.shared().await?)
            .await?;
        Ok(hash.map(|password_hash| Account {
            password_hash,
            role: role.unwrap_or_else(|| "player".into()),
        }))
    }
}
