// The jobs ticked for comparison, kept in this tab's sessionStorage (cleared on sign-out).

const KEY = "revhpo.compare";
const MAX = 8;

export function compareSelection() {
  const read = () => {
    try {
      const ids = JSON.parse(sessionStorage.getItem(KEY) || "[]");
      return Array.isArray(ids) ? ids.filter((x) => typeof x === "string") : [];
    } catch {
      return [];
    }
  };
  const write = (ids) => {
    sessionStorage.setItem(KEY, JSON.stringify(ids.slice(-MAX)));
    document.dispatchEvent(new CustomEvent("revhpo:selection"));
  };
  return {
    get size() {
      return read().length;
    },
    ids: () => read(),
    has: (id) => read().includes(id),
    add: (id) => write([...read().filter((x) => x !== id), id]),
    delete: (id) => write(read().filter((x) => x !== id)),
    clear: () => write([]),
    set: (ids) => write(ids),
  };
}
