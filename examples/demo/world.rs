//! The demo world's map: five rooms, their descriptions and exits.
//!
//! Owns: static data and look-ups on it. Must not touch: players, the broker.
//! A real game keeps this in its own database; the broker never sees it, only
//! the room ids the game uses for membership (`PUT /v1/rooms/{room}/members/{player}`).

/// One room of the map.
#[derive(Debug)]
pub struct Room {
    /// The id the broker knows the room by (`[A-Za-z0-9_-]`).
    pub id: &'static str,
    pub name: &'static str,
    pub description: &'static str,
    /// `(direction, room id)` pairs.
    pub exits: &'static [(&'static str, &'static str)],
}

/// Where a player appears the first time the game sees them.
pub const START: &str = "tavern";

/// The whole map.
pub const ROOMS: &[Room] = &[
    Room {
        id: "tavern",
        name: "The Lamplit Tavern",
        description: "Low beams, a sulking fire, and a barkeep who polishes the same glass \
                      forever. A door leads north to the square; a trapdoor behind the bar \
                      opens down into the dark.",
        exits: &[("north", "square"), ("down", "cellar")],
    },
    Room {
        id: "cellar",
        name: "The Tavern Cellar",
        description: "Casks line the damp walls. One of them is chalked with a symbol nobody \
                      admits to having drawn. A ladder climbs back up to the tavern.",
        exits: &[("up", "tavern")],
    },
    Room {
        id: "square",
        name: "Independence Square",
        description: "Gas lamps hiss around a dry fountain. The tavern is south, the \
                      university library east, and a bridge over the river lies north.",
        exits: &[
            ("south", "tavern"),
            ("east", "library"),
            ("north", "bridge"),
        ],
    },
    Room {
        id: "library",
        name: "The University Library",
        description: "Green lamps over long tables; a librarian watches the restricted shelf \
                      more closely than the readers. The square is back west.",
        exits: &[("west", "square")],
    },
    Room {
        id: "bridge",
        name: "The Old Bridge",
        description: "Fog rolls up from the black river and swallows the far bank. Something \
                      down there hums, very softly. The square is south.",
        exits: &[("south", "square")],
    },
];

/// The room with this id.
pub fn room(id: &str) -> Option<&'static Room> {
    ROOMS.iter().find(|r| r.id == id)
}

/// The full name of a direction word (`n` → `north`), if it is one.
pub fn direction(word: &str) -> Option<&'static str> {
    match word {
        "n" | "north" => Some("north"),
        "s" | "south" => Some("south"),
        "e" | "east" => Some("east"),
        "w" | "west" => Some("west"),
        "u" | "up" => Some("up"),
        "d" | "down" => Some("down"),
        _ => None,
    }
}

impl Room {
    /// Where going `direction` (a full name) leads from here.
    pub fn exit(&self, direction: &str) -> Option<&'static Room> {
        self.exits
            .iter()
            .find(|(d, _)| *d == direction)
            .and_then(|(_, to)| room(to))
    }

    /// The exits' directions, e.g. `north, down`.
    pub fn exit_list(&self) -> String {
        let names: Vec<&str> = self.exits.iter().map(|(d, _)| *d).collect();
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_exit_leads_somewhere_and_back() {
        for r in ROOMS {
            assert!(mythos_broker::protocol::valid_id(r.id), "{}", r.id);
            for (dir, to) in r.exits {
                let there = room(to).unwrap_or_else(|| panic!("{} -> {to}", r.id));
                assert!(direction(dir).is_some(), "{dir} is not a direction");
                assert!(
                    there.exits.iter().any(|(_, back)| *back == r.id),
                    "{} has no way back to {}",
                    there.id,
                    r.id
                );
            }
        }
        assert!(room(START).is_some());
    }

    #[test]
    fn directions_and_exits() {
        assert_eq!(direction("n"), Some("north"));
        assert_eq!(direction("down"), Some("down"));
        assert_eq!(direction("sideways"), None);
        let tavern = room("tavern").map(|r| (r.exit("north").map(|r| r.id), r.exit_list()));
        assert_eq!(tavern, Some((Some("square"), "north, down".to_string())));
    }
}
