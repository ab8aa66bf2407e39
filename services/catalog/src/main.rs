fn main() -> std::process::ExitCode {
    shop_runtime::run::<catalog_service::CatalogService>()
}
