// The operator's silo page in headless Chromium (Debian's), driven by playwright-core: log
// in as an operator, change a server's loading, add a server to a cluster with its loading,
// and see the page show both; then see the statistics page draw its charts.
// Usage: node silo.mjs PORTAL_URL NAME PASSWORD CLUSTER SERVER LOADING NEW_SERVER ADDRESS
//        NEW_LOADING SCREENSHOT_DIR
// (playwright-core is found through NODE_PATH.) Prints "changed" on success.
import { createRequire } from "module";
const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");

const [url, name, password, cluster, server, loading, added, address, addedLoading, shots] =
  process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await page.goto(url + "/");
  await page.getByLabel("Name or address").fill(name);
  await page.getByLabel("Password").fill(password);
  await page.getByLabel("Password").press("Enter");
  await page.waitForURL(/\/silo/);
  await page.screenshot({ path: `${shots}/silo.png`, fullPage: true });

  await page.getByLabel(`Loading of ${server}`).fill(loading);
  await page.locator(`#s-${server}`).getByRole("button", { name: "Set loading" }).click();
  await page.getByRole("status").waitFor();
  const first = await page.getByRole("status").textContent();
  if (!first.includes(`${cluster}/${server}: loading set to ${loading}`)) {
    throw new Error(`notice: ${first}`);
  }

  const form = page.getByRole("group", { name: `Add a server to ${cluster}` });
  await form.getByLabel("Name").fill(added);
  await form.getByLabel("Address (IP:PORT)").fill(address);
  await form.getByLabel("Loading").fill(addedLoading);
  await form.getByRole("button", { name: "Add server" }).click();
  await page.locator(`#s-${added}`).waitFor();
  const second = await page.getByRole("status").textContent();
  if (!second.includes(`${cluster}/${added}: added at ${address}`)) {
    throw new Error(`notice: ${second}`);
  }
  const row = await page.locator(`#s-${server}`).textContent();
  if (!row.includes(`loading ${loading}`)) throw new Error(`row: ${row}`);
  await page.screenshot({ path: `${shots}/silo-changed.png`, fullPage: true });

  await page.getByRole("link", { name: "Statistics" }).click();
  await page.waitForURL(/\/stats/);
  const verdicts = page.getByRole("img", { name: /^Messages by verdict: [1-9]/ });
  await verdicts.waitFor();
  const bars = await verdicts.locator("rect").count();
  if (bars < 2) throw new Error(`the verdict chart has ${bars} rectangles`);
  const charts = await page.locator("svg.chart").count();
  if (charts < 6) throw new Error(`${charts} charts`); // 4 series, 2 top lists with entries
  await page.screenshot({ path: `${shots}/stats.png`, fullPage: true });
  console.log("changed");
} finally {
  await browser.close();
}
