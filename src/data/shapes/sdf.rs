//! The eight outlines as signed distance functions in a unit frame: negative inside, zero
//! on the edge, distances in units of the object's radius, y up. Every outline fits inside
//! the unit disc, so an object of radius r never reaches further than r from its centre
//! (placement relies on it). A distance field rather than a bitmap is what lets one scene
//! render anti-aliased at any resolution.

use std::f32::consts::{FRAC_1_SQRT_2, FRAC_PI_2, PI};

use super::factors::ShapeKind;

/// An outline prepared for evaluation at many points: edges are built once per object, not
/// once per pixel.
pub(crate) enum Outline {
    Circle {
        radius: f32,
    },
    Polygon(Vec<Edge>),
    /// A square standing on a corner with two discs on its upper edges.
    Heart {
        square: Vec<Edge>,
        lobes: [[f32; 2]; 2],
        lobe_radius: f32,
    },
}

/// A polygon edge with the quotients the distance needs precomputed (they are the divisions
/// of the inner loop).
pub(crate) struct Edge {
    start: [f32; 2],
    delta: [f32; 2],
    inv_len2: f32,
    /// dx/dy, used by the crossing test only where the edge is not horizontal.
    slope: f32,
}

/// The edges of a closed polygon, each vertex to the next.
fn edges(vertices: &[[f32; 2]]) -> Vec<Edge> {
    let next = vertices.iter().cycle().skip(1);
    vertices
        .iter()
        .zip(next)
        .map(|(&a, &b)| {
            let delta = [b[0] - a[0], b[1] - a[1]];
            let slope = if delta[1] == 0.0 { 0.0 } else { delta[0] / delta[1] };
            Edge { start: a, delta, inv_len2: 1.0 / (delta[0] * delta[0] + delta[1] * delta[1]), slope }
        })
        .collect()
}

/// `n` points on a circle of `radius`, starting at `phase` radians, counter-clockwise.
fn ring(n: usize, radius: f32, phase: f32) -> Vec<[f32; 2]> {
    (0..n)
        .map(|i| {
            let a = phase + 2.0 * PI * i as f32 / n as f32;
            [radius * a.cos(), radius * a.sin()]
        })
        .collect()
}

impl Outline {
    pub(crate) fn new(shape: ShapeKind) -> Outline {
        match shape {
            ShapeKind::Circle => Outline::Circle { radius: 0.9 },
            ShapeKind::Square => Outline::Polygon(edges(&ring(4, 0.96, PI / 4.0))),
            // Circumradius 0.87, moved down by a quarter of it so the bounding box is centred;
            // the corners then sit just inside the unit disc.
            ShapeKind::Triangle => {
                let corners: Vec<[f32; 2]> =
                    ring(3, 0.87, FRAC_PI_2).into_iter().map(|[x, y]| [x, y - 0.2175]).collect();
                Outline::Polygon(edges(&corners))
            }
            ShapeKind::Star => {
                let points: Vec<[f32; 2]> = (0..10)
                    .map(|i| {
                        let radius = if i % 2 == 0 { 1.0 } else { 0.45 };
                        let a = FRAC_PI_2 + PI * i as f32 / 5.0;
                        [radius * a.cos(), radius * a.sin()]
                    })
                    .collect();
                Outline::Polygon(edges(&points))
            }
            ShapeKind::Cross => {
                let (l, w) = (0.9, 0.3);
                Outline::Polygon(edges(&[
                    [w, w],
                    [w, l],
                    [-w, l],
                    [-w, w],
                    [-l, w],
                    [-l, -w],
                    [-w, -w],
                    [-w, -l],
                    [w, -l],
                    [w, -w],
                    [l, -w],
                    [l, w],
                ]))
            }
            ShapeKind::Hexagon => Outline::Polygon(edges(&ring(6, 0.95, 0.0))),
            ShapeKind::Diamond => Outline::Polygon(edges(&[[0.0, -1.0], [0.62, 0.0], [0.0, 1.0], [-0.62, 0.0]])),
            ShapeKind::Heart => {
                // Square of half-diagonal q centred at (0, y0); lobes of radius q/sqrt(2) on the
                // midpoints of its upper edges. y0 centres the bounding box vertically, and
                // q = 0.74 puts the lobes' outer edge just inside the unit disc.
                let q = 0.74;
                let y0 = -0.1036 * q;
                Outline::Heart {
                    square: edges(&[[0.0, y0 - q], [q, y0], [0.0, y0 + q], [-q, y0]]),
                    lobes: [[-q / 2.0, y0 + q / 2.0], [q / 2.0, y0 + q / 2.0]],
                    lobe_radius: q * FRAC_1_SQRT_2,
                }
            }
        }
    }

    /// Signed distance from `p` to the outline, in the unit frame.
    pub(crate) fn distance(&self, p: [f32; 2]) -> f32 {
        match self {
            Outline::Circle { radius } => p[0].hypot(p[1]) - radius,
            Outline::Polygon(vertices) => polygon_distance(vertices, p),
            Outline::Heart { square, lobes, lobe_radius } => {
                let lobe = |c: [f32; 2]| (p[0] - c[0]).hypot(p[1] - c[1]) - lobe_radius;
                polygon_distance(square, p).min(lobe(lobes[0])).min(lobe(lobes[1]))
            }
        }
    }
}

/// Exact signed distance to a simple polygon: the distance to the nearest edge, negative
/// when an even-odd ray crossing count says the point is inside (works for the concave star
/// and cross as well as the convex shapes).
fn polygon_distance(edges: &[Edge], p: [f32; 2]) -> f32 {
    let mut nearest = f32::INFINITY;
    let mut inside = false;
    for edge in edges {
        let ([ax, ay], [ex, ey]) = (edge.start, edge.delta);
        let (wx, wy) = (p[0] - ax, p[1] - ay);
        let t = ((wx * ex + wy * ey) * edge.inv_len2).clamp(0.0, 1.0);
        let (dx, dy) = (wx - ex * t, wy - ey * t);
        nearest = nearest.min(dx * dx + dy * dy);
        if (ay > p[1]) != (ay + ey > p[1]) && p[0] < ax + wy * edge.slope {
            inside = !inside;
        }
    }
    if inside { -nearest.sqrt() } else { nearest.sqrt() }
}
