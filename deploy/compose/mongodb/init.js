// Run once by the mongo image when its data volume is new (/docker-entrypoint-initdb.d), as the
// root user of MONGO_INITDB_ROOT_USERNAME. One user per service database, allowed to read and
// write that database only. Passwords equal user names: development only. (They must match the
// MONGODB_URLs in docker-compose.yml; the deploy-check crate's drift test compares them.)
const owners = { catalog: "catalog_service", notification: "notification_service" };
for (const [database, user] of Object.entries(owners)) {
  db.getSiblingDB(database).createUser({
    user,
    pwd: user,
    roles: [{ role: "readWrite", db: database }],
  });
}
