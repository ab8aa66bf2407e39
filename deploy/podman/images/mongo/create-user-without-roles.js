// Loaded by the MongoDB stand-in's entrypoint before every *.js init script (mongosh --eval).
// FerretDB 1.x refuses createUser with roles ("support for field roles ... is not implemented
// yet"): it authenticates users but has no authorization. Rather than fail the init script, the
// user is created without its roles, and the log says which roles were not applied.
// With authentication off (no root user configured) FerretDB 1.x has no createUser command at
// all: the user is not created, and the log says so.
(() => {
  const proto = Object.getPrototypeOf(db);
  const createUser = proto.createUser;
  const authOn = process.env.STANDIN_AUTH === "on";
  proto.createUser = function (user, ...rest) {
    if (!authOn) {
      print(`[mongo stand-in] authentication is off: user ${user.user} not created`);
      return { ok: 1 };
    }
    if (Array.isArray(user.roles) && user.roles.length > 0) {
      print(`[mongo stand-in] FerretDB 1.x has no roles: creating user ${user.user} ` +
            `without ${JSON.stringify(user.roles)}`);
      user = Object.assign({}, user, { roles: [] });
    }
    return createUser.call(this, user, ...rest);
  };
})();
