# Sourced by the scripts that need PostgreSQL (the tests, the fleet, the benchmarks): a
# cluster of their own from Debian's postgresql package, made with initdb and run with
# pg_ctl under a directory of theirs, on loopback, never the system's service. PostgreSQL
# refuses to run as root, so as root it runs as the postgres user.
#
#   pg_install                 install postgresql when missing (and stop the service it starts)
#   pg_start DIR FIRST_PORT    initdb DIR/data unless there; start on the first free port from
#                              FIRST_PORT; sets PG_PORT and PG_ADMIN (a URL to the postgres db)
#   pg_database NAME           create NAME unless there; print its URL
#   pg_stop DIR [MODE]         stop (MODE: fast, the default, or immediate)

pg_install() {
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v psql >/dev/null; then
    echo "installing: postgresql"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    for c in $(ls /etc/postgresql 2>/dev/null); do pg_ctlcluster "$c" main stop >/dev/null 2>&1 || true; done
  fi
}

PG_BIN=
PG_AS=()
pg_setup() {
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  PG_AS=()
  if [ "$(id -u)" = 0 ]; then
    PG_AS=(runuser -u postgres --)
  fi
}

pg_start() { # DIR FIRST_PORT
  local dir=$1 first=$2 p
  pg_setup
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    chown postgres: "$dir"
  fi
  if [ ! -d "$dir/data" ]; then
    "${PG_AS[@]}" "$PG_BIN/initdb" -D "$dir/data" -A trust -U postgres ${PG_INITDB_OPTS:-} >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log"; return 1; }
  fi
  PG_PORT=
  for p in $(seq "$first" $((first + 100))); do
    if "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 30 start \
        -o "-c listen_addresses=127.0.0.1 -p $p -c unix_socket_directories=$dir -c max_connections=400" >/dev/null 2>&1; then
      PG_PORT=$p
      break
    fi
  done
  [ -n "$PG_PORT" ] || { echo "PostgreSQL did not start:"; tail -n 20 "$dir/log"; return 1; }
  PG_ADMIN="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
}

pg_database() { # NAME
  psql "$PG_ADMIN" -tAc "SELECT 1 FROM pg_database WHERE datname = '$1'" | grep -q 1 \
    || psql "$PG_ADMIN" -qc "CREATE DATABASE $1"
  echo "postgres://postgres@127.0.0.1:$PG_PORT/$1"
}

pg_stop() { # DIR [MODE]
  [ -n "$PG_BIN" ] || pg_setup
  "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$1/data" -m "${2:-fast}" stop >/dev/null 2>&1 || true
}
