//! Refresh-token families on Redis: one hash per family,
//! `mythos:refresh:{<family>}` (`player`, `role`, `hash`), with a time to
//! live; `lua/refresh.lua` creates, rotates (with reuse detection) and
//! revokes it atomically.
//!
//! Owns: the [`RefreshTokens`] capability. Must not touch: tokens, cookies
//! or HTTP (callers pass the SHA-256 of a token's secret, never the token),
//! and no key but the family's own.

use std::time::Duration;

use async_trait::async_trait;

use super::{keys, ms, RedisEngine};
use crate::engine::{EngineError, RefreshFamily, RefreshTokens, Result, Rotation};

/// A family's owner from the script's `player, role` pair.
fn owner(player: String, role: String) -> RefreshFamily {
    RefreshFamily { player, role }
}

#[async_trait]
impl RefreshTokens for RedisEngine {
    async fn create_family(
        &self,
        family: &str,
        owner: &RefreshFamily,
        hash: &str,
        ttl: Duration,
    ) -> Result<()> {
        let _: i64 = self
            .scripts
            .refresh
            .key(keys::refresh(family))
            .arg("create")
            .arg(&owner.player)
            .arg(&owner.role)
            .arg(hash)
            .arg(ms(ttl))
            .invoke_async(&mut self.shared().await?)
            .await?;
        Ok(())
    }

    async fn rotate_family(
        &self,
        family: &str,
        presented: &str,
        next: &str,
        ttl: Duration,
    ) -> Result<Rotation> {
        let answer: Vec<String> = self
            .scripts
            .refresh
            .key(keys::refresh(family))
            .arg("rotate")
            .arg(presented)
            .arg(next)
            .arg(ms(ttl))
            .invoke_async(&mut self.shared().await?)
            .await?;
        let mut it = answer.into_iter();
        match (it.next().as_deref(), it.next(), it.next()) {
            (Some("rotated"), Some(p), Some(r)) => Ok(Rotation::Rotated(owner(p, r))),
            (Some("reused"), Some(p), Some(r)) => Ok(Rotation::Reused(owner(p, r))),
            (Some("unknown"), None, None) => Ok(Rotation::Unknown),
            _ => Err(EngineError::Corrupt(
                "refresh.lua answered an unexpected shape".into(),
            )),
        }
    }

    async fn revoke_family(&self, family: &str) -> Result<Option<RefreshFamily>> {
        let answer: Vec<String> = self
            .scripts
            .refresh
            .key(keys::refresh(family))
            .arg("revoke")
            .invoke_async(&mut self.shared().await?)
            .await?;
        let mut it = answer.into_iter();
        Ok(match (it.next(), it.next()) {
            (Some(p), Some(r)) => Some(owner(p, r)),
            _ => None,
        })
    }

    async fn family_exists(&self, family: &str) -> Result<bool> {
        let n: u8 = redis::cmd("EXISTS")
            .arg(keys::refresh(family))
            .query_async(&mut self.shared().await?)
            .await?;
        Ok(n == 1)
    }
}
