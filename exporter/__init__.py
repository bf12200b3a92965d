"""exporter: PostgreSQL rows to CSV files in the background, served fast and resumably."""

# trio-asyncio makes asyncio.get_running_loop() see its loop from trio tasks by replacing
# that function; psycopg binds it by name when first imported. So trio_asyncio must be
# imported before psycopg, and the package's first import is the one place that always
# runs first.
import trio_asyncio  # noqa: F401
