//! Typed resources (placeholder until the kinds land).
