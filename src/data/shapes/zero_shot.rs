//! Zero-shot classification per factor (reference section 6.4): class names, prompt
//! template ensembles, and the label of a scene. Every prompt is a training carrier around
//! a noun phrase the grammar could produce, colour and shape always included as in training
//! captions; the ensemble varies the words around the class (the colour for shape, the
//! shape for colour, eight held-in colour-shape pairs for the other factors).

use super::caption::{PROMPT_CARRIERS, TRAIN_CARRIERS, number_word, plural, position_phrase, tidy};
use super::factors::{Colour, Position, ShapeKind, Size, Texture};
use super::scene::{Layout, Scene};
use super::split::HELD_OUT_COUNT;

/// One zero-shot task: classify an image into `classes` by comparing it with the prompts.
#[derive(Debug, Clone, PartialEq)]
pub struct Factor {
    /// "shape", "colour", "size", "position", "texture", "count" or "colour_shape"; the
    /// name [`label_of`] takes.
    pub name: &'static str,
    /// Class names, in class-index order.
    pub classes: Vec<String>,
    /// The prompt ensemble; `{}` stands for the class name. Use [`Factor::prompts`], which
    /// also fixes agreement ("an orange", "one circle").
    pub templates: Vec<String>,
}

impl Factor {
    /// Every prompt of a class, one per template; empty for an out-of-range class.
    pub fn prompts(&self, class: usize) -> Vec<String> {
        let Some(name) = self.classes.get(class) else { return Vec::new() };
        self.templates.iter().map(|t| tidy(&t.replacen("{}", name, 1))).collect()
    }
}

/// Templates: each prompt carrier around each noun-phrase pattern.
fn ensemble(patterns: impl Iterator<Item = String>) -> Vec<String> {
    let patterns: Vec<String> = patterns.collect();
    TRAIN_CARRIERS[..PROMPT_CARRIERS]
        .iter()
        .flat_map(|carrier| patterns.iter().map(move |p| carrier.replace("{}", p)))
        .collect()
}

fn words<T: Copy>(values: &[T], word: impl Fn(T) -> &'static str) -> Vec<String> {
    values.iter().map(|&v| word(v).to_string()).collect()
}

/// The colour-shape pairs the size, texture, position and count ensembles are phrased with:
/// colour i with shape i, one per colour and per shape, all held in (the held-out pattern
/// never touches the diagonal).
fn diagonal() -> impl Iterator<Item = (&'static str, ShapeKind)> {
    Colour::ALL.iter().zip(ShapeKind::ALL).map(|(c, &s)| (c.word(), s))
}

/// The seven factors: shape (8), colour (8), size (3), position (9), texture (4),
/// count (5) and the joint colour-shape (64, class `colour * 8 + shape`).
pub fn zero_shot_factors() -> Vec<Factor> {
    vec![
        Factor {
            name: "shape",
            classes: words(ShapeKind::ALL, ShapeKind::word),
            templates: ensemble(Colour::ALL.iter().map(|c| format!("a {} {{}}", c.word()))),
        },
        Factor {
            name: "colour",
            classes: words(Colour::ALL, Colour::word),
            templates: ensemble(ShapeKind::ALL.iter().map(|s| format!("a {{}} {}", s.word()))),
        },
        Factor {
            name: "size",
            classes: words(Size::ALL, Size::word),
            templates: ensemble(diagonal().map(|(c, s)| format!("a {{}} {c} {}", s.word()))),
        },
        Factor {
            name: "position",
            classes: words(Position::ALL, position_phrase),
            templates: ensemble(diagonal().map(|(c, s)| format!("a {c} {} {{}}", s.word()))),
        },
        Factor {
            name: "texture",
            classes: words(Texture::ALL, Texture::word),
            templates: ensemble(diagonal().map(|(c, s)| format!("a {c} {{}} {}", s.word()))),
        },
        Factor {
            name: "count",
            classes: (1..=HELD_OUT_COUNT).filter_map(number_word).map(String::from).collect(),
            templates: ensemble(diagonal().map(|(c, s)| format!("{{}} {c} {}", plural(s.word())))),
        },
        Factor {
            name: "colour_shape",
            classes: Colour::ALL
                .iter()
                .flat_map(|c| ShapeKind::ALL.iter().map(move |s| format!("{} {}", c.word(), s.word())))
                .collect(),
            templates: ensemble(std::iter::once("a {}".to_string())),
        },
    ]
}

/// The class index of the scene's first object for a factor, `None` for an unknown factor
/// or one the scene does not define: position of a scene with several copies (each has its
/// own), count of a two-object scene.
pub fn label_of(scene: &Scene, factor: &str) -> Option<usize> {
    let first = scene.objects.first()?;
    match factor {
        "shape" => Some(first.shape.index()),
        "colour" => Some(first.colour.index()),
        "size" => Some(first.size.index()),
        "texture" => Some(first.texture.index()),
        "colour_shape" => Some(first.colour.index() * ShapeKind::ALL.len() + first.shape.index()),
        "position" => match scene.layout {
            Layout::Copies { count } if count > 1 => None,
            _ => Some(first.position.index()),
        },
        "count" => match scene.layout {
            Layout::Copies { count } => count.checked_sub(1),
            Layout::Pair { .. } => None,
        },
        _ => None,
    }
}
