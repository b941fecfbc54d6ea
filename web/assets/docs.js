// /docs: Swagger UI (vendored, a classic script defining SwaggerUIBundle) over our document.
window.SwaggerUIBundle({ url: "/openapi.json", dom_id: "#ui", deepLinking: true });
