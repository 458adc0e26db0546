//! The factors of variation (reference section 6.1) as small enums. The class index of a
//! value is its place in `ALL`, the order zero-shot classifiers and labels use; the word is
//! what captions and prompts say, so the two can never drift apart.

use serde::{Deserialize, Serialize};

/// Declares a factor enum with its value list, class index and caption word.
macro_rules! factor {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $word:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            /// Every value, in class-index order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The class index: the value's place in `ALL`.
            pub fn index(self) -> usize {
                self as usize
            }

            /// The value of a class index, `None` out of range.
            pub fn from_index(index: usize) -> Option<$name> {
                $name::ALL.get(index).copied()
            }

            /// The word captions and prompts use.
            pub fn word(self) -> &'static str {
                match self {
                    $($name::$variant => $word),+
                }
            }
        }
    };
}

factor! {
    /// The eight outlines, each a signed distance function (see `sdf.rs`).
    ShapeKind {
        Circle => "circle", Square => "square", Triangle => "triangle", Star => "star",
        Heart => "heart", Cross => "cross", Hexagon => "hexagon", Diamond => "diamond",
    }
}

factor! {
    /// Named colours; each is an HSV region around a centre (see `palette.rs`).
    Colour {
        Red => "red", Orange => "orange", Yellow => "yellow", Green => "green",
        Blue => "blue", Purple => "purple", White => "white", Black => "black",
    }
}

factor! {
    /// Radius bands, relative to a grid cell.
    Size { Small => "small", Medium => "medium", Large => "large" }
}

factor! {
    /// Fill patterns inside the shape's mask.
    Texture { Solid => "solid", Striped => "striped", Dotted => "dotted", Outlined => "outlined" }
}

factor! {
    /// Cells of the 3x3 grid, row-major from the top left. The word is the class name;
    /// captions use the phrase of `caption::position_phrase`.
    Position {
        TopLeft => "top left", Top => "top", TopRight => "top right",
        Left => "left", Center => "center", Right => "right",
        BottomLeft => "bottom left", Bottom => "bottom", BottomRight => "bottom right",
    }
}

factor! {
    /// Backgrounds: two plain greys, smooth grey noise, a grey ramp. All grey, so none is
    /// ever one of the six chromatic colours; white objects never get the light one and
    /// black objects never the dark one.
    Background { Light => "light", Dark => "dark", Noise => "noisy", Gradient => "gradient" }
}

factor! {
    /// Spatial relations of two-object scenes: "A `<relation>` B".
    Relation { LeftOf => "to the left of", RightOf => "to the right of", Above => "above", Below => "below" }
}

impl Position {
    /// Grid row, 0 at the top.
    pub fn row(self) -> usize {
        self.index() / 3
    }

    /// Grid column, 0 at the left.
    pub fn col(self) -> usize {
        self.index() % 3
    }

    /// The cell at a grid row and column (both below 3).
    pub(crate) fn at(row: usize, col: usize) -> Position {
        Position::ALL[(row.min(2)) * 3 + col.min(2)]
    }

    /// The cell holding a point given in fractions of the image side.
    pub(crate) fn of_point(x: f32, y: f32) -> Position {
        let cell = |v: f32| ((v * 3.0).max(0.0) as usize).min(2);
        Position::at(cell(y), cell(x))
    }
}
