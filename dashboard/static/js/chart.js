// One store's chart with uPlot: actual sales and the version's forecast for the last weeks, the forecast
// of the next days with its interval band, and promotions, holidays and closed days as day columns; with a
// what-if, its forecast of the next days beside the baseline.

const COLORS = { line: "#1f6fb4", band: "rgba(31, 111, 180, 0.18)", actual: "#222", past: "#6a9fd0",
                 promo: "rgba(245, 158, 11, 0.22)", holiday: "#8e44ad", closed: "rgba(120, 120, 120, 0.16)",
                 today: "#1f6fb4", whatIf: "#d97706" };
const DAY = 86400;
const fmt = (v) => (v === null || v === undefined ? "–" : Math.round(v).toLocaleString("en-US"));

/** The series arrays of the chart (x in seconds, UTC midnight); nulls where nothing is drawn. The numbers are
 * the API's: a closed day (shaded) is drawn at 0, as the API answers it, forecast and band alike. */
export function series(rows, whatIf = null) {
  const x = rows.map((r) => Date.parse(`${r.date}T00:00:00Z`) / 1000);
  const out = [
    x,
    rows.map((r) => (r.past && r.actual !== null ? r.actual : null)),
    rows.map((r) => (r.past ? r.value : null)),
    rows.map((r) => (!r.past ? r.value : null)),
    rows.map((r) => r.lower),
    rows.map((r) => r.upper),
  ];
  if (whatIf) out.push(rows.map((r) => (!r.past && whatIf.has(r.date) ? whatIf.get(r.date) : null)));
  return out;
}

function dayColumns(u, rows) {
  const { ctx } = u;
  const { top, height } = u.bbox;
  const x0 = u.bbox.left, x1 = u.bbox.left + u.bbox.width;
  ctx.save();
  rows.forEach((r, i) => {
    const x = u.data[0][i];
    const a = Math.max(x0, u.valToPos(x - DAY / 2, "x", true)), b = Math.min(x1, u.valToPos(x + DAY / 2, "x", true));
    if (b <= a) return;
    if (!r.open) { ctx.fillStyle = COLORS.closed; ctx.fillRect(a, top, b - a, height); }
    if (r.promo) { ctx.fillStyle = COLORS.promo; ctx.fillRect(a, top, b - a, height); }
    if (r.holiday) {
      ctx.strokeStyle = COLORS.holiday; ctx.lineWidth = 2 * devicePixelRatio;
      ctx.beginPath(); ctx.moveTo((a + b) / 2, top); ctx.lineTo((a + b) / 2, top + height); ctx.stroke();
    }
  });
  const today = rows.findIndex((r) => !r.past);
  if (today > 0) {
    const t = u.valToPos(u.data[0][today] - DAY / 2, "x", true);
    ctx.strokeStyle = COLORS.today; ctx.setLineDash([4 * devicePixelRatio, 4 * devicePixelRatio]);
    ctx.lineWidth = devicePixelRatio;
    ctx.beginPath(); ctx.moveTo(t, top); ctx.lineTo(t, top + height); ctx.stroke();
  }
  ctx.restore();
}

/** Draw (or redraw) the chart of ``rows`` into ``el`` (with ``whatIf``, a Map date -> value: a what-if series);
 * the uPlot instance is kept as ``el.uplot``. As wide as its card, however narrow the screen. */
export function drawChart(el, rows, title, whatIf = null) {
  if (el.uplot) { el.uplot.destroy(); el.uplot = null; }
  el.textContent = "";
  const data = series(rows, whatIf);
  const width = Math.max(200, el.clientWidth || el.parentElement.clientWidth || 800);
  const opts = {
    title, width, height: 260,
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true }, y: { range: (u, lo, hi) => [0, Math.max(1, hi) * 1.08] } },
    series: [
      { label: "date", value: (u, v) => (v === null ? "–" : new Date(v * 1000).toISOString().slice(0, 10)) },
      { label: "actual sales", stroke: COLORS.actual, width: 1.5, points: { show: true, size: 5 }, value: (u, v) => fmt(v) },
      { label: "forecast then", stroke: COLORS.past, dash: [5, 4], width: 1.5, value: (u, v) => fmt(v) },
      { label: "forecast", stroke: COLORS.line, width: 2, points: { show: true, size: 6 }, value: (u, v) => fmt(v) },
      { label: "lower", stroke: "rgba(31, 111, 180, 0.35)", width: 1, value: (u, v) => fmt(v) },
      { label: "upper", stroke: "rgba(31, 111, 180, 0.35)", width: 1, value: (u, v) => fmt(v) },
      ...(whatIf ? [{ label: "what-if", stroke: COLORS.whatIf, width: 2, dash: [6, 3], points: { show: true, size: 6 },
                      value: (u, v) => fmt(v) }] : []),
    ],
    bands: [{ series: [5, 4], fill: COLORS.band }],
    axes: [{}, { size: width < 420 ? 44 : 60, values: (u, ticks) => ticks.map((v) => (v >= 1000 ? `${Math.round(v / 100) / 10}k` : v)) }],
    hooks: { drawClear: [(u) => dayColumns(u, rows)] },
  };
  const u = new uPlot(opts, data, el);
  el.uplot = u;
  const future = rows.map((r, i) => (!r.past ? i : -1)).filter((i) => i >= 0);
  el.dataset.points = String(future.length);
  el.dataset.forecastPoints = String(future.filter((i) => data[3][i] !== null).length);
  el.dataset.bandPoints = String(future.filter((i) => data[4][i] !== null && data[5][i] !== null).length);
  el.dataset.pastPoints = String(rows.length - future.length);
  el.dataset.actualPoints = String(data[1].filter((v) => v !== null).length);
  el.dataset.whatIfPoints = whatIf ? String(data[6].filter((v) => v !== null).length) : "0";
  return u;
}

/** Swatches for the day columns this chart shows. */
export function legendExtra(el, rows, whatIf = null) {
  const items = [];
  if (whatIf) items.push(["what-if (dashed orange) vs forecast (blue)", COLORS.whatIf]);
  if (rows.some((r) => r.promo)) items.push(["promotion", COLORS.promo]);
  if (rows.some((r) => r.holiday)) items.push(["holiday", COLORS.holiday]);
  if (rows.some((r) => !r.open)) items.push(["closed", COLORS.closed]);
  el.textContent = "";
  for (const [label, color] of items) {
    const span = document.createElement("span");
    const sw = document.createElement("i");
    sw.style.background = color;
    span.append(sw, label);
    el.append(span);
  }
}

/** Keep the chart as wide as its card. */
export function followWidth(el) {
  if (el.resizeObserver) return;
  el.resizeObserver = new ResizeObserver(() => {
    if (el.uplot && el.clientWidth && Math.abs(el.uplot.width - el.clientWidth) > 4) {
      el.uplot.setSize({ width: Math.max(200, el.clientWidth), height: 260 });
    }
  });
  el.resizeObserver.observe(el);
}
