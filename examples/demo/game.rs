//! The demo game's rules: what one player command does, and which events it
//! sends to whom.
//!
//! Owns: parsing a command-stream entry into an [`Action`], where each player
//! is (a cache of the broker's room membership), and the events of each
//! action. Every command gets exactly one `command_response` to its player,
//! whose `data.command_id` is the client's id for the command, so the client
//! can match answers to what was typed. Must not touch: the command stream
//! itself (the loop in `demo/mod.rs` reads and acknowledges it) or HTTP details
//! (`demo/broker.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use super::broker::{BrokerApi, BrokerError};
use super::world::{self, Room, ROOMS, START};
use mythos_broker::engine::{Command, CommandEntry};

/// What a player asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Look,
    /// `go <exit>`, or a bare direction; `None` when no exit was given.
    Go(Option<String>),
    Say(String),
    Who,
    Help,
    /// A chat line on a channel this world does not have.
    NoSuchChannel(String),
    /// Anything else: the word the player typed.
    Unknown(String),
}

/// The `payload` of a `command` entry: `{"command": "go", "args": ["north"]}`.
#[derive(Deserialize)]
struct CommandPayload {
    command: String,
    #[serde(default)]
    args: Vec<String>,
}

/// The `payload` of a `chat` entry: `{"channel": "say", "message": "hi"}`.
#[derive(Deserialize)]
struct ChatPayload {
    channel: String,
    message: String,
}

/// Reads what a player asked for from a command-stream entry.
pub fn parse(cmd: &Command) -> Action {
    if cmd.kind == "chat" {
        return match serde_json::from_str::<ChatPayload>(&cmd.payload) {
            Ok(c) if c.channel == "say" => Action::Say(c.message),
            Ok(c) => Action::NoSuchChannel(c.channel),
            Err(_) => Action::Unknown(String::new()),
        };
    }
    let Ok(c) = serde_json::from_str::<CommandPayload>(&cmd.payload) else {
        return Action::Unknown(String::new());
    };
    match c.command.as_str() {
        "look" | "l" => Action::Look,
        "go" => Action::Go(c.args.first().cloned()),
        "say" => Action::Say(c.args.join(" ")),
        "who" => Action::Who,
        "help" => Action::Help,
        word => match world::direction(word) {
            Some(d) => Action::Go(Some(d.to_string())),
            None => Action::Unknown(word.to_string()),
        },
    }
}

const HELP: &str = "Commands:\n  look (l)          describe where you are\n  go <exit>         \
walk through an exit; n, s, e, w, u, d and north, south, ... work alone\n  say <text>        \
speak to everyone in the room ('text works too)\n  who               who is in the world, and where\n  \
help              this list";

/// What a command answers its player: the `data` of its `command_response`.
struct Reply {
    ok: bool,
    text: String,
    /// A room description, for the page to show as one.
    room: Option<Value>,
}

impl Reply {
    fn text(text: impl Into<String>) -> Self {
        Self {
            ok: true,
            text: text.into(),
            room: None,
        }
    }
    fn error(text: impl Into<String>) -> Self {
        Self {
            ok: false,
            ..Self::text(text)
        }
    }
}

/// The idempotency key of one event a command causes: derived from the
/// command's stream entry, so handling the entry again delivers nothing new.
/// Entry ids are unique within a partition, and a player's commands all go
/// to one partition: with the player, the key is unique.
fn event_id(entry: &CommandEntry, what: &str) -> String {
    format!("demo-{}-{}-{what}", entry.command.player_id, entry.entry_id)
}

/// The game's state: where players are.
pub struct Game {
    api: Arc<BrokerApi>,
    /// player id → room. Filled from the broker's membership on first sight.
    whereabouts: HashMap<String, &'static Room>,
}

impl Game {
    pub fn new(api: Arc<BrokerApi>) -> Self {
        Self {
            api,
            whereabouts: HashMap::new(),
        }
    }

    /// Carries out one command and answers it.
    pub async fn handle(&mut self, entry: &CommandEntry) -> Result<(), BrokerError> {
        let player = entry.command.player_id.as_str();
        let here = self.locate(player).await?;
        let reply = match parse(&entry.command) {
            Action::Look => self.look(here, player).await?,
            Action::Go(exit) => self.go(here, player, exit).await?,
            Action::Say(message) => self.say(entry, here, message).await?,
            Action::Who => self.who().await?,
            Action::Help => Reply::text(HELP),
            Action::NoSuchChannel(channel) => {
                Reply::error(format!("There is no \"{channel}\" channel here; use say."))
            }
            Action::Unknown(word) => Reply::error(format!(
                "Unknown command \"{word}\". Try look, go <exit>, n/s/e/w/u/d, say <text>, \
                 who, or help."
            )),
        };
        self.respond(entry, reply).await
    }

    /// Where `player` is. The first time this game server sees a player it
    /// asks the broker (a restarted game server finds players where they
    /// were); a player in no room yet appears in the start room.
    async fn locate(&mut self, player: &str) -> Result<&'static Room, BrokerError> {
        if let Some(room) = self.whereabouts.get(player) {
            return Ok(room);
        }
        let mut found = None;
        for room in ROOMS {
            if self.api.members(room.id).await?.iter().any(|m| m == player) {
                found = Some(room);
                break;
            }
        }
        let room = match found {
            Some(room) => room,
            None => {
                self.api.join(START, player).await?;
                world::room(START).unwrap_or(&ROOMS[0])
            }
        };
        self.whereabouts.insert(player.to_string(), room);
        Ok(room)
    }

    /// The members of `room` other than `player`.
    async fn others(&self, room: &Room, player: &str) -> Result<Vec<String>, BrokerError> {
        let mut members = self.api.members(room.id).await?;
        members.retain(|m| m != player);
        Ok(members)
    }

    /// A room as the page shows it: name, description, exits, who else is there.
    async fn describe(&self, room: &Room, player: &str) -> Result<Value, BrokerError> {
        let others = self.others(room, player).await?;
        let exits: Vec<&str> = room.exits.iter().map(|(d, _)| *d).collect();
        Ok(
            json!({"room_id": room.id, "name": room.name, "description": room.description,
                  "exits": exits, "players": others}),
        )
    }

    async fn look(&self, here: &Room, player: &str) -> Result<Reply, BrokerError> {
        Ok(Reply {
            room: Some(self.describe(here, player).await?),
            ..Reply::text("")
        })
    }

    async fn go(
        &mut self,
        here: &'static Room,
        player: &str,
        exit: Option<String>,
    ) -> Result<Reply, BrokerError> {
        let Some(exit) = exit else {
            return Ok(Reply::error(format!(
                "Go where? Exits: {}.",
                here.exit_list()
            )));
        };
        let Some((direction, there)) = world::direction(&exit.to_lowercase())
            .and_then(|d| here.exit(d).map(|there| (d, there)))
        else {
            return Ok(Reply::error(format!(
                "You cannot go \"{exit}\" from here. Exits: {}.",
                here.exit_list()
            )));
        };
        // The broker announces both: player_left to the old room, player_entered to the new.
        self.api.leave(here.id, player).await?;
        self.api.join(there.id, player).await?;
        self.whereabouts.insert(player.to_string(), there);
        Ok(Reply {
            room: Some(self.describe(there, player).await?),
            ..Reply::text(format!("You go {direction}."))
        })
    }

    async fn say(
        &self,
        entry: &CommandEntry,
        here: &Room,
        message: String,
    ) -> Result<Reply, BrokerError> {
        let message = message.trim();
        if message.is_empty() {
            return Ok(Reply::error("Say what?"));
        }
        let player = entry.command.player_id.as_str();
        let others = self.others(here, player).await?;
        if !others.is_empty() {
            let data = json!({"channel": "say", "from": player, "message": message});
            let id = event_id(entry, "chat");
            self.api
                .publish(
                    json!({"players": others}),
                    "chat_message",
                    data,
                    Some(here.id),
                    Some(&id),
                )
                .await?;
        }
        Ok(Reply::text(format!("You say: {message}")))
    }

    /// Who is connected, and where (`GET /v1/presence/{room}`): players
    /// online, and those whose connection dropped inside the grace
    /// (`linkdead`); the offline ones are counted, not listed.
    async fn who(&self) -> Result<Reply, BrokerError> {
        let mut lines = Vec::new();
        let mut away = 0;
        for room in ROOMS {
            for (player, state) in self.api.presence(room.id).await? {
                match state.as_str() {
                    "online" => lines.push(format!("  {player:<12} {}", room.name)),
                    "linkdead" => lines.push(format!("  {player:<12} {} (link-dead)", room.name)),
                    _ => away += 1,
                }
            }
        }
        let mut text = if lines.is_empty() {
            "Nobody is in the world.".to_string()
        } else {
            format!("In the world:\n{}", lines.join("\n"))
        };
        if away > 0 {
            text.push_str(&format!("\n({away} asleep, not connected)"));
        }
        Ok(Reply::text(text))
    }

    /// Sends the command's one `command_response` to its player.
    async fn respond(&self, entry: &CommandEntry, reply: Reply) -> Result<(), BrokerError> {
        let mut data = json!({"command_id": entry.command.id, "ok": reply.ok, "text": reply.text});
        if let Some(room) = reply.room {
            data["room"] = room;
        }
        let id = event_id(entry, "response");
        let player = entry.command.player_id.as_str();
        let room_id = self.whereabouts.get(player).map(|r| r.id);
        self.api
            .publish(
                json!({"player": player}),
                "command_response",
                data,
                room_id,
                Some(&id),
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(kind: &str, payload: Value) -> Command {
        Command {
            player_id: "alice".into(),
            session_id: "s".into(),
            kind: kind.into(),
            id: "c1".into(),
            payload: payload.to_string(),
        }
    }

    #[test]
    fn parses_commands_and_chat() {
        let cases = [
            (json!({"command": "look", "args": []}), Action::Look),
            (json!({"command": "l"}), Action::Look),
            (
                json!({"command": "go", "args": ["north"]}),
                Action::Go(Some("north".into())),
            ),
            (json!({"command": "go"}), Action::Go(None)),
            (json!({"command": "s"}), Action::Go(Some("south".into()))),
            (json!({"command": "up"}), Action::Go(Some("up".into()))),
            (
                json!({"command": "say", "args": ["hi", "there"]}),
                Action::Say("hi there".into()),
            ),
            (json!({"command": "who"}), Action::Who),
            (json!({"command": "help"}), Action::Help),
            (json!({"command": "dance"}), Action::Unknown("dance".into())),
        ];
        for (payload, want) in cases {
            assert_eq!(
                parse(&command("command", payload.clone())),
                want,
                "{payload}"
            );
        }
        let say = command("chat", json!({"channel": "say", "message": "hello all"}));
        assert_eq!(parse(&say), Action::Say("hello all".into()));
        let ooc = command("chat", json!({"channel": "ooc", "message": "x"}));
        assert_eq!(parse(&ooc), Action::NoSuchChannel("ooc".into()));
        assert_eq!(
            parse(&command("command", json!("garbage"))),
            Action::Unknown(String::new())
        );
    }
}
