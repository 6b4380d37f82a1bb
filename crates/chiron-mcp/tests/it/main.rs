//! `PackageCatalog` over real storage (SQLite) and packages on disk, with a fake runner.

mod packages;
