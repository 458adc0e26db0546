//! Splits, the held-out compositions that separate them (reference section 6.3), and the
//! per-sample random stream that makes every sample a pure function of (config, split,
//! index).

use serde::{Deserialize, Serialize};

use super::factors::{Position, ShapeKind, Size, Texture};
use crate::tensor::Rng;

/// Which distribution a sample comes from. Each split has its own key space, so no two
/// (split, index) pairs share a random stream: evaluation images are never training images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Split {
    /// Training: held-in colour-shape pairs only, including second objects; none of the
    /// other hold-outs either. Scenes with copies (counts) and, with `two_object_prob`,
    /// two-object scenes.
    Train,
    /// Evaluation on the training distribution of single-kind scenes (no two-object scenes,
    /// so the first object is the whole story for zero-shot labels).
    Seen,
    /// As `Seen`, but every object is one of the 16 held-out colour-shape pairs.
    Unseen,
    /// As `Seen` (held-in pairs), captioned only with the held-out carriers and synonyms.
    UnseenTemplate,
    /// Two objects with distinct colours and distinct shapes joined by "and"; the four
    /// colour-shape pairs of the image and of its attribute swap are all held in, so only
    /// binding tells the true caption from the swapped one.
    Binding,
    /// Two objects in a spatial relation (same row for left/right, same column for
    /// above/below, so exactly one relation holds), distinct colours and shapes.
    Relation,
    /// Held-in colour-shape pairs with exactly one of the other hold-outs: a held-out
    /// texture-shape pair (when textures are on), a large object in the bottom-right cell,
    /// or five copies (when `max_count` is 5). Expected to be hard; a stress number.
    Extrapolate,
}

impl Split {
    pub const ALL: [Split; 7] = [
        Split::Train,
        Split::Seen,
        Split::Unseen,
        Split::UnseenTemplate,
        Split::Binding,
        Split::Relation,
        Split::Extrapolate,
    ];

    /// A stable name for logs and result files.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Seen => "seen",
            Split::Unseen => "unseen",
            Split::UnseenTemplate => "unseen_template",
            Split::Binding => "binding",
            Split::Relation => "relation",
            Split::Extrapolate => "extrapolate",
        }
    }
}

/// Bits of the stream word that hold the index; the split takes the bits above, so the key
/// spaces of two splits are disjoint by construction. Indices wrap at 2^58.
const INDEX_BITS: u32 = 58;

/// The random stream of one sample. The stream word (split, index) is XORed with a key
/// derived from the config seed, and `Rng::new` maps distinct seeds to distinct states, so
/// distinct (split, index) pairs never share a stream, and any sample can be generated alone,
/// in any order, on any thread.
pub(crate) fn sample_rng(seed: u64, split: Split, index: u64) -> Rng {
    let key = Rng::new(seed).next_u64();
    let stream = ((split as u64) << INDEX_BITS) | (index & ((1 << INDEX_BITS) - 1));
    Rng::new(key ^ stream)
}

/// The random stream of hard-negative group `group` of the training split (what the group's
/// samples share), apart from every sample stream: the key is salted.
pub(crate) fn group_rng(seed: u64, group: u64) -> Rng {
    const GROUP_SALT: u64 = 0x9e37_79b9_7f4a_7c15;
    sample_rng(seed ^ GROUP_SALT, Split::Train, group)
}

/// `(shape - colour) mod 8` of the held-out colour-shape pairs. Two offsets make a balanced
/// pattern: each colour misses exactly two shapes and each shape exactly two colours, and
/// offsets 2 and 5 keep the pairs off the diagonal so no colour loses "its" first shape.
const HELD_OUT_OFFSETS: [usize; 2] = [2, 5];
/// Shapes a colour is seen with in training.
pub(crate) const HELD_IN_SHAPES_PER_COLOUR: usize = 8 - HELD_OUT_OFFSETS.len();

/// Whether a colour-shape pair (class indices) is one of the 16 never seen in training.
/// Out-of-range indices are not held out.
pub fn is_held_out(colour: usize, shape: usize) -> bool {
    colour < 8 && shape < 8 && HELD_OUT_OFFSETS.contains(&((shape + 8 - colour) % 8))
}

/// Texture-shape pairs never seen in training (solid is never held out, so a config
/// without textures loses nothing).
pub const HELD_OUT_TEXTURES: [(Texture, ShapeKind); 4] = [
    (Texture::Striped, ShapeKind::Heart),
    (Texture::Dotted, ShapeKind::Triangle),
    (Texture::Outlined, ShapeKind::Star),
    (Texture::Striped, ShapeKind::Hexagon),
];

/// Whether a texture-shape pair is held out of training.
pub fn is_held_out_texture(texture: Texture, shape: ShapeKind) -> bool {
    HELD_OUT_TEXTURES.contains(&(texture, shape))
}

/// The held-out size-position corner: large objects never sit in the bottom-right cell in
/// training, though both factors are seen everywhere else.
pub fn is_held_out_placement(size: Size, position: Position) -> bool {
    size == Size::Large && position == Position::BottomRight
}

/// The count kept for extrapolation: training shows 1 to 4 copies.
pub const HELD_OUT_COUNT: usize = 5;
