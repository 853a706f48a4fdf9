//! Bulkhead policy compiler (being written).
