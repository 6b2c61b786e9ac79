//! Test-bed support code (not product code).
