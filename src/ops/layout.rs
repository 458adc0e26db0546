//! Shape and data-movement ops: reshape (a view), transpose/permute, concat, slice, and
//! row gathers (embedding lookup, EOT token selection).

use super::{be, check_dim, check_ids, check_rank, check_same_kind};
use crate::autograd::{record, record1};
use crate::error::{Error, Result};
use crate::tensor::{Shape, Table, Tensor};

impl Tensor {
    /// The same elements under another shape of equal size. A view: no copy.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let y = self.view_as(shape.into())?;
        let from = self.shape().clone();
        Ok(record1("reshape", &[self], y, move |dy, _| Ok(vec![Some(dy.view_as(from)?)])))
    }

    /// Reorders dimensions: output dim j is input dim `perm[j]`.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let mut seen = vec![false; self.rank()];
        let valid =
            perm.len() == self.rank() && perm.iter().all(|&p| p < seen.len() && !std::mem::replace(&mut seen[p], true));
        if !valid {
            return Err(Error::shape(
                "permute",
                format!("{perm:?} is not a permutation of the dims of {}", self.shape()),
            ));
        }
        let y = be(self).permute(self, perm)?;
        let mut inverse = vec![0; perm.len()];
        for (j, &p) in perm.iter().enumerate() {
            inverse[p] = j;
        }
        Ok(record1("permute", &[self], y, move |dy, _| Ok(vec![Some(be(dy).permute(dy, &inverse)?)])))
    }

    /// Swaps two dimensions.
    pub fn transpose(&self, d0: usize, d1: usize) -> Result<Tensor> {
        check_dim("transpose", self, d0.max(d1))?;
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(d0, d1);
        self.permute(&perm)
    }

    /// Elements `start..start + len` along `dim`.
    pub fn slice(&self, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        check_dim("slice", self, dim)?;
        let full = self.dims()[dim];
        if start + len > full {
            return Err(Error::index("slice", format!("{start}..{} along dim {dim} of {}", start + len, self.shape())));
        }
        let y = be(self).slice(self, dim, start, len)?;
        Ok(record1("slice", &[self], y, move |dy, _| Ok(vec![Some(be(dy).pad_slice(dy, dim, start, full)?)])))
    }

    /// Rows of a [rows, d] table picked by `ids`: [ids.len(), d]. This is embedding lookup;
    /// gradients of repeated ids add up.
    pub fn index_rows(&self, ids: &[u32]) -> Result<Tensor> {
        self.index_rows_by(&Table::new(ids.to_vec()))
    }

    /// [`Tensor::index_rows`] with the ids in a [`Table`], which its forward and backward
    /// kernels read from one device copy (rewritten in place for a captured graph's next launch).
    pub fn index_rows_by(&self, ids: &Table) -> Result<Tensor> {
        const OP: &str = "index_rows";
        check_rank(OP, "table", self, &[2])?;
        let rows = self.dims()[0];
        check_ids(OP, &ids.words(), rows)?;
        let y = be(self).index_rows(self, ids)?;
        let ids = ids.clone();
        Ok(record1(OP, &[self], y, move |dy, _| Ok(vec![Some(be(dy).index_rows_backward(dy, &ids, rows)?)])))
    }
}

/// Concatenation along `dim`; every other dimension must agree.
pub fn concat(xs: &[&Tensor], dim: usize) -> Result<Tensor> {
    const OP: &str = "concat";
    let first = xs.first().ok_or_else(|| Error::invalid(OP, "no tensors to concatenate"))?;
    check_same_kind(OP, xs)?;
    check_dim(OP, first, dim)?;
    for t in xs {
        let mut a = t.dims().to_vec();
        let mut b = first.dims().to_vec();
        if a.len() == b.len() {
            a[dim] = 0;
            b[dim] = 0;
        }
        if a != b {
            let shapes: Vec<String> = xs.iter().map(|t| t.shape().to_string()).collect();
            return Err(Error::shape(OP, format!("along dim {dim}: {}", shapes.join(", "))));
        }
    }
    let y = be(first).concat(xs, dim)?;
    let lengths: Vec<usize> = xs.iter().map(|t| t.dims()[dim]).collect();
    let mut out = record(OP, xs, vec![y], move |grads, needs| {
        let dy = grads[0].as_ref().expect("single output");
        let mut start = 0;
        let mut result = Vec::with_capacity(lengths.len());
        for (&len, &need) in lengths.iter().zip(needs) {
            result.push(if need { Some(be(dy).slice(dy, dim, start, len)?) } else { None });
            start += len;
        }
        Ok(result)
    });
    Ok(out.pop().expect("one output"))
}
