// The portal in headless Chromium (Debian's), driven by playwright-core: log in as a user,
// find a quarantined message on the quarantine page, release it, and see the page say so.
// Usage: node portal.mjs PORTAL_URL NAME PASSWORD MESSAGE_ID SCREENSHOT_DIR
// (playwright-core is found through NODE_PATH.) Prints "released QUEUE_ID" on success.
import { createRequire } from "module";
const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");

const [url, name, password, id, shots] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 390, height: 844 } }); // a phone
  await page.goto(url + "/quarantine");
  // Not logged in: the login page, reached with the keyboard.
  await page.getByLabel("Name or address").fill(name);
  await page.getByLabel("Password").fill(password);
  await page.getByLabel("Password").press("Enter");
  await page.waitForURL(/\/quarantine/);
  const row = page.locator(`#m-${id}`);
  await row.waitFor();
  await page.screenshot({ path: `${shots}/quarantine.png`, fullPage: true });
  await page.getByRole("button", { name: `Release ${id}`, exact: true }).click();
  const notice = page.getByRole("status");
  await notice.waitFor();
  const text = await notice.textContent();
  await page.screenshot({ path: `${shots}/released.png`, fullPage: true });
  if (!text.includes(`Released ${id}`)) throw new Error(`notice: ${text}`);
  if (await page.locator(`#m-${id}`).count() !== 0) throw new Error("the row is still there");
  console.log("released " + text.split("queued as ")[1].replace(/\.$/, ""));
} finally {
  await browser.close();
}
