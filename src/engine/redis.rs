//! The Redis engine (placeholder until the redis-engine branch lands).
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{Account, Command, CommandEntry, Cursor, Engine, EngineError, Limits, Result, Resume};
use crate::hub::Hub;
use crate::protocol::{Delivery, Event, EventBody, Target};

pub struct RedisEngine;

impl RedisEngine {
    pub async fn connect(_: &str, _: usize, _: Limits, _: Arc<Hub>) -> Result<Arc<Self>> {
        Err(EngineError::Rejected("redis engine not built yet"))
    }
}

const NO: EngineError = EngineError::Rejected("redis engine not built yet");

#[async_trait]
impl Engine for RedisEngine {
    async fn publish(
        &self,
        _: &Target,
        _: Arc<EventBody>,
        _: Option<&str>,
    ) -> Result<Vec<Delivery>> {
        Err(NO)
    }
    async fn read(&self, _: &str, _: u64, _: usize) -> Result<Vec<Event>> {
        Err(NO)
    }
    async fn resume(&self, _: &str, _: u64) -> Result<Resume> {
        Err(NO)
    }
    async fn ack(&self, _: &str, _: u64) -> Result<Cursor> {
        Err(NO)
    }
    async fn cursor(&self, _: &str) -> Result<Cursor> {
        Err(NO)
    }
    async fn join(&self, _: &str, _: &str) -> Result<Option<Vec<String>>> {
        Err(NO)
    }
    async fn leave(&self, _: &str, _: &str) -> Result<Option<Vec<String>>> {
        Err(NO)
    }
    async fn members(&self, _: &str) -> Result<Vec<String>> {
        Err(NO)
    }
    async fn rooms_of(&self, _: &str) -> Result<Vec<String>> {
        Err(NO)
    }
    async fn push_command(&self, _: &Command) -> Result<(String, bool)> {
        Err(NO)
    }
    async fn read_commands(
        &self,
        _: &str,
        _: &str,
        _: usize,
        _: Duration,
    ) -> Result<Vec<CommandEntry>> {
        Err(NO)
    }
    async fn ack_commands(&self, _: &str, _: &[String]) -> Result<()> {
        Err(NO)
    }
    async fn create_user(&self, _: &str, _: &Account) -> Result<bool> {
        Err(NO)
    }
    async fn user(&self, _: &str) -> Result<Option<Account>> {
        Err(NO)
    }
    async fn ping(&self) -> Result<()> {
        Err(NO)
    }
}
