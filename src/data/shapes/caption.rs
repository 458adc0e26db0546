//! Captions from a grammar (reference section 6.2):
//! `[det] [count] [size] colour [texture] shape[s] [position]`, and for two objects
//! `A and B` or `A <relation> B`, inside a carrier template. Shape is always said, and so is
//! colour outside training (every zero-shot and binding test needs both); a training caption
//! drops the colour with the colour-dropout probability, each other slot with the
//! caption-dropout probability, so the model also learns from partial descriptions.

use super::factors::{Background, Position, ShapeKind};
use super::scene::{Layout, Object, Scene};
use crate::tensor::Rng;

/// Carriers of training captions: `{}` is the description, `{bg}` the background word.
/// The first [`PROMPT_CARRIERS`] double as the zero-shot prompt ensemble, so prompts are
/// phrased the way training captions are.
pub(crate) const TRAIN_CARRIERS: [&str; 12] = [
    "a photo of {}",
    "an image of {}",
    "a drawing of {}",
    "{}",
    "a picture of {}",
    "a rendering of {}",
    "a simple image showing {}",
    "{} on a {bg} background",
    "this image shows {}",
    "here we see {}",
    "a synthetic picture with {}",
    "a computer graphic of {}",
];

/// How many of the first training carriers make the zero-shot prompt ensemble.
pub(crate) const PROMPT_CARRIERS: usize = 3;

/// Carriers never used in training: only the unseen-template split says them. Each has a
/// word no training caption contains (snapshot, illustration, sketch).
pub(crate) const EVAL_CARRIERS: [&str; 3] = ["a snapshot of {}", "an illustration of {}", "a sketch showing {}"];

/// Shape synonyms never used in training, said instead of the shape word in the
/// unseen-template split.
pub(crate) const SYNONYMS: [(ShapeKind, &str); 2] = [(ShapeKind::Square, "box"), (ShapeKind::Diamond, "rhombus")];

/// How often a single object is "the" rather than "a": some variety in the determiner, so
/// the text tower does not tie meaning to one article.
const DEFINITE_SHARE: f64 = 0.3;

/// Number words of counts 1 to 5.
const NUMBERS: [&str; 5] = ["one", "two", "three", "four", "five"];

/// English plural of every noun the grammar uses ("cross", "box", "rhombus" take -es).
pub(crate) fn plural(noun: &str) -> String {
    if noun.ends_with('s') || noun.ends_with('x') { format!("{noun}es") } else { format!("{noun}s") }
}

/// How a position is said after the noun.
pub(crate) fn position_phrase(position: Position) -> &'static str {
    match position {
        Position::TopLeft => "in the top left",
        Position::Top => "at the top",
        Position::TopRight => "in the top right",
        Position::Left => "on the left",
        Position::Center => "in the center",
        Position::Right => "on the right",
        Position::BottomLeft => "in the bottom left",
        Position::Bottom => "at the bottom",
        Position::BottomRight => "in the bottom right",
    }
}

/// The word of a count, `None` outside 1 to 5.
pub(crate) fn number_word(count: usize) -> Option<&'static str> {
    NUMBERS.get(count.wrapping_sub(1)).copied()
}

/// Which words a caption may use: the training ones, or the held-out carriers and synonyms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wording {
    Train,
    HeldOut,
}

impl Wording {
    fn carriers(self) -> &'static [&'static str] {
        match self {
            Wording::Train => &TRAIN_CARRIERS,
            Wording::HeldOut => &EVAL_CARRIERS,
        }
    }

    fn noun(self, shape: ShapeKind) -> &'static str {
        let synonym = SYNONYMS.iter().find(|(s, _)| *s == shape).map(|(_, word)| *word);
        match (self, synonym) {
            (Wording::HeldOut, Some(word)) => word,
            _ => shape.word(),
        }
    }
}

/// What a caption may say, fixed per config and split.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grammar {
    pub wording: Wording,
    /// Textures are drawn, so naming them means something.
    pub textures: bool,
    /// Counts are on; with one object per image "one" would only be noise.
    pub counts: bool,
    /// Probability of keeping each optional slot.
    pub keep: f64,
    /// Probability of keeping the colour; at 1 no draw is made for it, so captions without
    /// colour dropout are the ones drawn before the knob existed.
    pub keep_colour: f64,
}

/// Per noun phrase: which optional slots survive dropout, and "the" instead of "a".
#[derive(Debug, Clone, Copy)]
struct Slots {
    colour: bool,
    count: bool,
    size: bool,
    texture: bool,
    position: bool,
    definite: bool,
}

/// The random choices of one caption, drawn in a fixed number of draws before any word is
/// chosen. The same choices then describe the scene and its swapped twin (binding,
/// relation) with the same carrier and slots, so the two captions differ only in the swap.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Choices {
    carrier: usize,
    phrases: [Slots; 2],
}

impl Choices {
    pub(crate) fn draw(rng: &mut Rng, grammar: &Grammar) -> Choices {
        let carrier = rng.below(grammar.wording.carriers().len());
        let mut slots = || {
            let mut keep = || rng.uniform() < grammar.keep;
            let (count, size, texture, position) = (keep(), keep(), keep(), keep());
            let definite = rng.uniform() < DEFINITE_SHARE;
            let colour = grammar.keep_colour >= 1.0 || rng.uniform() < grammar.keep_colour;
            Slots { colour, count, size, texture, position, definite }
        };
        let first = slots();
        Choices { carrier, phrases: [first, slots()] }
    }
}

/// The caption of `scene` under `choices`.
pub(crate) fn caption(scene: &Scene, choices: &Choices, grammar: &Grammar) -> String {
    let [first, second] = &choices.phrases;
    let body = match (scene.layout, scene.objects.as_slice()) {
        (Layout::Copies { count }, [object, ..]) => noun_phrase(object, count, first, grammar, true),
        (Layout::Pair { relation }, [a, b, ..]) => {
            let link = relation.map_or("and", |r| r.word());
            format!("{} {link} {}", noun_phrase(a, 1, first, grammar, false), noun_phrase(b, 1, second, grammar, false))
        }
        _ => String::new(),
    };
    let carriers = grammar.wording.carriers();
    let carrier = carriers[choices.carrier % carriers.len()];
    tidy(&carrier.replace("{bg}", scene.background.word()).replace("{}", &body))
}

/// One object's description; `count` copies of it. Position is only said of a lone object
/// in a single-kind scene (copies have many positions; pairs are placed by their relation).
fn noun_phrase(object: &Object, count: usize, slots: &Slots, grammar: &Grammar, alone: bool) -> String {
    let mut words: Vec<&str> = Vec::with_capacity(8);
    if count == 1 {
        words.push(if grammar.counts && slots.count {
            "one"
        } else if slots.definite {
            "the"
        } else {
            "a"
        });
    } else if let Some(number) = number_word(count).filter(|_| slots.count) {
        words.push(number);
    }
    if slots.size {
        words.push(object.size.word());
    }
    if slots.colour {
        words.push(object.colour.word());
    }
    if grammar.textures && slots.texture {
        words.push(object.texture.word());
    }
    let noun = grammar.wording.noun(object.shape);
    let noun = if count == 1 { noun.to_string() } else { plural(noun) };
    words.push(&noun);
    if alone && count == 1 && slots.position {
        words.push(position_phrase(object.position));
    }
    words.join(" ")
}

/// Agreement fixes applied to every caption and prompt: "a" before a vowel becomes "an"
/// ("an orange circle", "an outlined star"), and after "one" the next shape noun is
/// singular, which lets a count prompt template say "{} red circles" for every count.
pub(crate) fn tidy(text: &str) -> String {
    let words: Vec<&str> = text.split(' ').filter(|w| !w.is_empty()).collect();
    let mut out: Vec<&str> = Vec::with_capacity(words.len());
    let mut after_one = false;
    for (i, &word) in words.iter().enumerate() {
        let next = words.get(i + 1).copied().unwrap_or("");
        let singular = singular(word);
        out.push(match singular {
            Some(noun) if after_one => noun,
            _ if word == "a" && next.starts_with(['a', 'e', 'i', 'o', 'u']) => "an",
            _ => word,
        });
        if word == "one" {
            after_one = true;
        } else if singular.is_some() || nouns().any(|noun| noun == word) {
            after_one = false;
        }
    }
    out.join(" ")
}

/// Every shape noun, synonyms included.
fn nouns() -> impl Iterator<Item = &'static str> {
    ShapeKind::ALL.iter().map(|s| s.word()).chain(SYNONYMS.iter().map(|(_, w)| *w))
}

/// The singular of a plural shape noun, `None` for any other word.
fn singular(word: &str) -> Option<&'static str> {
    nouns().find(|noun| plural(noun) == word)
}

/// Lines that contain every word the evaluation captions can use and training captions
/// may not: every carrier (with every background word), the held-out synonyms in both
/// numbers, and both ways of joining two objects. Together with the zero-shot prompts they
/// complete a tokenizer corpus.
pub(crate) fn vocabulary_lines() -> Vec<String> {
    let mut lines = Vec::new();
    for carrier in TRAIN_CARRIERS.iter().chain(&EVAL_CARRIERS) {
        for background in Background::ALL {
            lines.push(tidy(&carrier.replace("{bg}", background.word()).replace("{}", "a red circle")));
            if !carrier.contains("{bg}") {
                break;
            }
        }
    }
    for (_, synonym) in SYNONYMS {
        lines.push(format!("a red {synonym}"));
        lines.push(format!("two red {}", plural(synonym)));
    }
    lines.push("a red circle and a blue square".to_string());
    for relation in super::factors::Relation::ALL {
        lines.push(format!("a red circle {} a blue square", relation.word()));
    }
    lines
}
