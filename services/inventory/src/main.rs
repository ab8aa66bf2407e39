fn main() -> std::process::ExitCode {
    shop_runtime::run::<inventory_service::InventoryService>()
}
