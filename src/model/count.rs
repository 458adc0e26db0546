//! Parameter counts by role, the numbers MS-CLIP's tables report.

use super::builder::{ModelSpec, Role};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParamCounts {
    pub total: usize,
    pub shared: usize,
    pub vision_only: usize,
    pub text_only: usize,
    /// Parameters of neither tower (the logit scale).
    pub joint: usize,
}

impl ParamCounts {
    pub fn of(spec: &ModelSpec) -> Self {
        let mut counts = ParamCounts::default();
        for p in &spec.params {
            let n: usize = p.shape.iter().product();
            counts.total += n;
            *match p.role {
                Role::Shared => &mut counts.shared,
                Role::Vision => &mut counts.vision_only,
                Role::Text => &mut counts.text_only,
                Role::Joint => &mut counts.joint,
            } += n;
        }
        counts
    }
}
